//! The event-loop side of a virtio-vsock device: its queues' ioeventfds, the listening
//! socket, every connection's host stream and a timer for the connections' deadlines.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Watch;
use super::VirtioVsock;

/// How often deadlines are checked while any is set.
const TICK: Duration = Duration::from_millis(250);

/// Event-manager subscriber for one vsock device.
pub struct VsockHandler {
    device: Arc<Mutex<VirtioVsock>>,
    kicks: [EventFd; 3],
    listener: RawFd,
    timer: Option<TimerFd>,
    timer_armed: bool,
}

impl VsockHandler {
    // Tokens above any descriptor number; host streams use their descriptor.
    const RX_KICK: u32 = u32::MAX;
    const TX_KICK: u32 = u32::MAX - 1;
    const EVT_KICK: u32 = u32::MAX - 2;
    const LISTENER: u32 = u32::MAX - 3;
    const TIMER: u32 = u32::MAX - 4;

    /// Serves `device`: `kicks` are its queues' ioeventfds (receive, transmit, event).
    pub fn new(device: Arc<Mutex<VirtioVsock>>, kicks: [EventFd; 3]) -> Self {
        let listener = device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .muxer()
            .listener_fd();
        let timer = TimerFd::new()
            .map_err(|e| error!("vsock: no timer, connection deadlines are not enforced: {e}"))
            .ok();
        Self {
            device,
            kicks,
            listener,
            timer,
            timer_armed: false,
        }
    }

    /// Moves packets both ways, then applies what changed to epoll and the timer.
    fn pump(&mut self, ops: &mut EventOps, tx: bool) {
        let mut dev = self.device.lock().unwrap_or_else(|p| p.into_inner());
        if tx && dev.process_tx() {
            let _ = self.kicks[1].write(1); // a batch left packets: come back
        }
        dev.process_rx();
        dev.process_event();
        let (watches, dead) = dev.muxer().take_changes();
        let deadlines = dev.muxer().has_deadlines();
        drop(dev);
        for Watch::Set { fd, old, new } in watches {
            let ev = |set| Events::with_data_raw(fd, fd as u32, set);
            let r = if old.is_empty() {
                ops.add(ev(new))
            } else if new.is_empty() {
                ops.remove(ev(old))
            } else {
                ops.modify(ev(new))
            };
            if let Err(e) = r {
                error!("vsock: cannot watch a host stream: {e:?}");
            }
        }
        drop(dead); // closed only now that epoll has forgotten them
        if deadlines != self.timer_armed {
            if let Some(t) = self.timer.as_mut() {
                let r = if deadlines {
                    t.reset(TICK, Some(TICK))
                } else {
                    t.clear()
                };
                match r {
                    Ok(()) => self.timer_armed = deadlines,
                    Err(e) => error!("vsock: timer: {e}"),
                }
            }
        }
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (evt, data) in [
            (&self.kicks[0], Self::RX_KICK),
            (&self.kicks[1], Self::TX_KICK),
            (&self.kicks[2], Self::EVT_KICK),
        ] {
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("vsock: cannot watch queue notifications: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data_raw(
            self.listener,
            Self::LISTENER,
            EventSet::IN,
        )) {
            error!("vsock: cannot watch the listening socket: {e:?}");
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(t, Self::TIMER, EventSet::IN)) {
                error!("vsock: cannot watch the timer: {e:?}");
            }
        }
        // A restored device may owe the guest a transport-reset event.
        self.pump(ops, false);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut tx = false;
        match events.data() {
            Self::RX_KICK => {
                let _ = self.kicks[0].read();
            }
            Self::TX_KICK => {
                let _ = self.kicks[1].read();
                tx = true;
            }
            Self::EVT_KICK => {
                let _ = self.kicks[2].read();
            }
            Self::LISTENER => {
                self.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .muxer()
                    .accept();
            }
            Self::TIMER => {
                if let Some(t) = self.timer.as_mut() {
                    let _ = t.wait();
                }
                self.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .muxer()
                    .tick(Instant::now());
            }
            fd if (fd as RawFd) >= 0 && fd < Self::TIMER => {
                self.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .muxer()
                    .host_event(fd as RawFd, events.event_set());
            }
            other => {
                warn!("vsock: unexpected event {other}");
                let _ = ops.remove(events);
                return;
            }
        }
        self.pump(ops, tx);
    }
}

impl AsRawFd for VsockHandler {
    fn as_raw_fd(&self) -> RawFd {
        self.listener
    }
}
