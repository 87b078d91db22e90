//! The VMM thread of one VM: an event-manager loop serving console input, the exit event and
//! device queues until the VM must stop, then the teardown that stops every vCPU thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::error;

use crate::control::VmControl;
use crate::device_manager::Subscriber;
use crate::exit::ExitReason;

/// The event manager type of a VM.
pub type Manager = EventManager<Subscriber>;

/// Watches the VM's exit eventfd, so the loop wakes when a vCPU or device ends the VM, and its
/// pause eventfd, on which the loop parks until the VM resumes or stops: whatever handler ran
/// before has finished, so no device request is in flight while the VM is paused.
pub struct ExitWatcher {
    control: Arc<VmControl>,
}

impl ExitWatcher {
    const EXIT: u32 = 0;
    const PAUSE: u32 = 1;

    /// Watches `control.exit_evt` and `control.pause_evt`.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.control.exit_evt,
            Self::EXIT,
            EventSet::IN,
        )) {
            error!("vm: cannot watch the exit event: {e:?}");
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.control.pause_evt,
            Self::PAUSE,
            EventSet::IN,
        )) {
            error!("vm: cannot watch the pause event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            Self::EXIT => {
                let _ = self.control.exit_evt.read();
            }
            Self::PAUSE => {
                let _ = self.control.pause_evt.read();
                self.control.park_event_loop();
            }
            _ => {
                let _ = ops.remove(events);
            }
        }
    }
}

/// Creates the event manager with the exit watcher and `subscribers`.
pub fn create_manager(
    control: &Arc<VmControl>,
    subscribers: Vec<Subscriber>,
) -> Result<Manager, event_manager::Error> {
    let mut em = Manager::new()?;
    em.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(control.clone()))));
    for s in subscribers {
        em.add_subscriber(s);
    }
    Ok(em)
}

/// Runs the loop until the VM must stop.
pub fn run_until_stop(em: &mut Manager, control: &VmControl) {
    while !control.should_stop() {
        if let Err(e) = em.run() {
            if matches!(&e, event_manager::Error::Epoll(err) if err.errno() == libc::EINTR) {
                continue;
            }
            control.request_exit(ExitReason::HostError(format!("event loop failed: {e}")));
        }
    }
}

/// Stops and joins every vCPU thread: sets the stop flag, kicks each thread once (the kick
/// cannot be lost: see [`crate::vcpu`]) and joins them all. No polling.
pub fn stop_vcpus(control: &VmControl, threads: Vec<JoinHandle<()>>) {
    control.request_exit(ExitReason::Stopped);
    control.kick_vcpus();
    // No kick may reach a thread once it is joined (its id could be reused).
    control.forget_vcpu_threads();
    for t in threads {
        if t.join().is_err() {
            error!("vm: a vCPU thread panicked");
        }
    }
}
