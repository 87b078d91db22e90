//! The event-loop side of a virtio-net device: the two queues' ioeventfds and the TAP.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::{RxOutcome, TxOutcome, VirtioNet};

struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Event-manager subscriber for one network device.
pub struct NetHandler {
    device: Arc<Mutex<VirtioNet>>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    tap: Fd,
    /// What the TAP is watched for (empty: not at all).
    watching: EventSet,
    /// Receive: waiting for the guest to post buffers.
    rx_starved: bool,
    /// Transmit: waiting for the TAP to take a frame.
    tx_blocked: bool,
}

impl NetHandler {
    const RX_KICK: u32 = 0;
    const TX_KICK: u32 = 1;
    const TAP: u32 = 2;

    /// Serves `device`: `kicks` are its queues' ioeventfds (receive, transmit).
    pub fn new(device: Arc<Mutex<VirtioNet>>, rx_kick: EventFd, tx_kick: EventFd) -> Self {
        let tap = Fd(device.lock().unwrap_or_else(|p| p.into_inner()).tap_fd());
        Self {
            device,
            rx_kick,
            tx_kick,
            tap,
            watching: EventSet::empty(),
            rx_starved: false,
            tx_blocked: false,
        }
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, VirtioNet> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the TAP for input unless the guest has no buffers, and for room while a
    /// frame waits.
    fn update_watch(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if !self.rx_starved {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == self.watching {
            return;
        }
        let r = if self.watching.is_empty() {
            ops.add(Events::with_data(&self.tap, Self::TAP, want))
        } else if want.is_empty() {
            ops.remove(Events::with_data(&self.tap, Self::TAP, self.watching))
        } else {
            ops.modify(Events::with_data(&self.tap, Self::TAP, want))
        };
        match r {
            Ok(()) => self.watching = want,
            Err(e) => error!("net: cannot watch the TAP: {e:?}"),
        }
    }

    fn receive(&mut self, ops: &mut EventOps) {
        let outcome = self.dev().process_rx();
        self.rx_starved = outcome == RxOutcome::NoBuffers;
        if outcome == RxOutcome::More {
            // Frames left after a batch: the TAP stays readable, so epoll comes back.
        }
        self.update_watch(ops);
    }

    fn transmit(&mut self, ops: &mut EventOps) {
        let outcome = self.dev().process_tx();
        self.tx_blocked = outcome == TxOutcome::Blocked;
        if outcome == TxOutcome::More {
            let _ = self.tx_kick.write(1);
        }
        self.update_watch(ops);
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (evt, data) in [
            (&self.rx_kick, Self::RX_KICK),
            (&self.tx_kick, Self::TX_KICK),
        ] {
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("net: cannot watch queue notifications: {e:?}");
            }
        }
        self.update_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            Self::RX_KICK => {
                let _ = self.rx_kick.read();
                // New buffers: frames waiting in the TAP can come in.
                self.rx_starved = false;
                self.receive(ops);
            }
            Self::TX_KICK => {
                let _ = self.tx_kick.read();
                self.transmit(ops);
            }
            Self::TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::OUT) {
                    self.transmit(ops);
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    self.receive(ops);
                }
            }
            other => {
                warn!("net: unexpected event {other}");
                let _ = ops.remove(events);
            }
        }
    }
}
