//! The VMM thread of one VM: an event-manager loop serving console input, the exit event and
//! device queues until the VM must stop, then the teardown that stops every vCPU thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{error, warn};
use vmm_sys_util::signal::Killable;

use crate::control::VmControl;
use crate::device_manager::Subscriber;
use crate::exit::ExitReason;
use crate::vcpu::kick_signal;

/// The event manager type of a VM.
pub type Manager = EventManager<Subscriber>;

/// Watches the VM's exit eventfd so the loop wakes when a vCPU or device ends the VM.
pub struct ExitWatcher {
    control: Arc<VmControl>,
}

impl ExitWatcher {
    const EXIT: u32 = 0;

    /// Watches `control.exit_evt`.
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
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == Self::EXIT {
            let _ = self.control.exit_evt.read();
        } else {
            let _ = ops.remove(events);
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

/// Stops and joins every vCPU thread: the stop flag is already set; each thread still
/// running is kicked out of `KVM_RUN` until it ends.
pub fn stop_vcpus(control: &VmControl, threads: Vec<JoinHandle<()>>) {
    control.request_exit(ExitReason::Stopped);
    for t in threads {
        let mut tries = 0u32;
        while !t.is_finished() {
            if let Err(e) = t.kill(kick_signal()) {
                warn!("vm: cannot kick a vCPU thread: {e}");
            }
            tries += 1;
            let pause = if tries < 100 { 100 } else { 1000 };
            std::thread::sleep(Duration::from_micros(pause));
        }
        if t.join().is_err() {
            error!("vm: a vCPU thread panicked");
        }
    }
}
