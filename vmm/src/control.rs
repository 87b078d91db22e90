//! The small piece of state every thread of one VM shares: the stop flag, the first exit
//! reason, the exit eventfd that wakes the event loop, and boot timestamps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::ExitReason;

/// Shared control block of one VM.
pub struct VmControl {
    stop: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    /// Written when the VM must stop; the event loop watches it.
    pub exit_evt: EventFd,
    first_run: OnceLock<Instant>,
    /// First byte of guest console output.
    pub first_output: OnceLock<Instant>,
    /// First appearance of the console marker.
    pub marker: OnceLock<Instant>,
    /// The boot-timer signal (shared with the device).
    pub boot_timer: std::sync::Arc<OnceLock<Instant>>,
    /// The first exit request: the guest stopped (or was stopped); what follows is teardown.
    pub stop_requested: OnceLock<Instant>,
}

impl VmControl {
    /// A new control block.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            first_run: OnceLock::new(),
            first_output: OnceLock::new(),
            marker: OnceLock::new(),
            boot_timer: std::sync::Arc::new(OnceLock::new()),
            stop_requested: OnceLock::new(),
        })
    }

    /// Whether the VM is stopping. One relaxed load: cheap enough for the run loop.
    #[inline]
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Ends the VM with `reason` unless another reason came first.
    pub fn request_exit(&self, reason: ExitReason) {
        let _ = self.stop_requested.set(Instant::now());
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.exit_evt.write(1) {
            warn!("vm: cannot signal the exit event: {e}");
        }
    }

    /// The recorded exit reason.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the first `KVM_RUN` of any vCPU.
    pub fn mark_first_run(&self) {
        let _ = self.first_run.set(Instant::now());
    }

    /// When the first vCPU first entered the guest.
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }
}

impl devices::ExitSink for VmControl {
    fn guest_exit(&self, exit: devices::GuestExit) {
        self.request_exit(match exit {
            devices::GuestExit::Reset => ExitReason::Reset,
            devices::GuestExit::PowerOff => ExitReason::PowerOff,
            devices::GuestExit::Status(s) => ExitReason::Status(s),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::ExitSink;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let c = VmControl::new().expect("eventfd");
        assert!(!c.should_stop());
        c.guest_exit(devices::GuestExit::Status(3));
        c.request_exit(ExitReason::Stopped);
        assert!(c.should_stop());
        assert_eq!(c.reason(), Some(ExitReason::Status(3)));
        assert_eq!(c.exit_evt.read().expect("signalled"), 2);
    }
}
