//! The small piece of state every thread of one VM shares: the stop flag, the first exit
//! reason, the exit eventfd that wakes the event loop, boot timestamps, and the pause
//! handshake (a pause is complete when every vCPU and the event loop are parked; a stop or a
//! resume wakes them all).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

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
    /// Set while a pause is asked for: the run loop's cheap check.
    pause_flag: AtomicBool,
    pause: Mutex<PauseState>,
    pause_cond: Condvar,
    /// Written to ask the event loop to park.
    pub pause_evt: EventFd,
    /// The running vCPU threads, to kick. Emptied (under the lock) before they are joined, so
    /// no kick goes to a thread that is gone.
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
}

#[derive(Debug, Default)]
struct PauseState {
    requested: bool,
    vcpus_parked: usize,
    loop_parked: bool,
    /// Bumped to ask every parked vCPU for its state.
    save_generation: u64,
    /// The answers, by vCPU index.
    saved: Vec<Option<Result<crate::vcpu::VcpuState, String>>>,
}

/// Why a pause did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// The VM has ended or is ending.
    #[error("The VM has ended")]
    Ended,
    /// A vCPU could not read its state.
    #[error("Cannot read the state of a vCPU: {0}")]
    VcpuState(String),
    /// Not every vCPU and the event loop parked within the time allowed (a vCPU stuck in a
    /// host call); the VM goes on running.
    #[error("The VM did not pause within {0:?}")]
    Timeout(Duration),
}

impl VmControl {
    /// A new control block.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            first_run: OnceLock::new(),
            first_output: OnceLock::new(),
            marker: OnceLock::new(),
            boot_timer: std::sync::Arc::new(OnceLock::new()),
            stop_requested: OnceLock::new(),
            pause_flag: AtomicBool::new(false),
            pause: Mutex::new(PauseState::default()),
            pause_cond: Condvar::new(),
            pause_evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            vcpu_threads: Mutex::new(Vec::new()),
        })
    }

    /// Whether the VM is stopping. One load (a plain `mov` on x86 even sequentially
    /// consistent): cheap enough for the run loop. Ordered after the vCPU thread published its
    /// `kvm_run` to the kick handler, so a stop is either seen here or kicks `KVM_RUN`.
    #[inline]
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
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
        // Wake whoever is parked or waiting for a pause.
        drop(self.pause_state());
        self.pause_cond.notify_all();
    }

    fn pause_state(&self) -> MutexGuard<'_, PauseState> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a pause is asked for. One load, for the run loop.
    #[inline]
    pub fn should_pause(&self) -> bool {
        self.pause_flag.load(Ordering::SeqCst)
    }

    /// Records the vCPU threads to kick (tests).
    pub fn set_vcpu_threads(&self, threads: Vec<libc::pthread_t>) {
        *self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
    }

    /// Records one more vCPU thread to kick, right after it is started.
    pub fn add_vcpu_thread(&self, thread: libc::pthread_t) {
        self.vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thread);
    }

    /// Forgets the vCPU threads before they are joined: no kick reaches them after this.
    pub fn forget_vcpu_threads(&self) {
        self.vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Kicks every vCPU thread out of `KVM_RUN` once.
    pub fn kick_vcpus(&self) {
        let threads = self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner());
        for &t in threads.iter() {
            // SAFETY: `t` is a vCPU thread that has not been joined: the list is emptied under
            // this lock before any is joined.
            let r = unsafe { libc::pthread_kill(t, crate::vcpu::kick_signal()) };
            if r != 0 && r != libc::ESRCH {
                warn!("vm: cannot kick a vCPU thread: errno {r}");
            }
        }
    }

    /// Pauses the VM: every vCPU leaves the guest (finishing the exit it was in) and parks,
    /// and the event loop finishes what it is doing and parks. Returns once all have parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        let vcpus = self
            .vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        {
            let mut st = self.pause_state();
            if self.should_stop() {
                return Err(PauseError::Ended);
            }
            st.requested = true;
            self.pause_flag.store(true, Ordering::SeqCst);
        }
        self.kick_vcpus();
        if let Err(e) = self.pause_evt.write(1) {
            warn!("vm: cannot ask the event loop to pause: {e}");
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.pause_state();
        while !(st.vcpus_parked >= vcpus && st.loop_parked) {
            if self.should_stop() {
                return Err(PauseError::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                self.resume();
                return Err(PauseError::Timeout(timeout));
            }
            st = self
                .pause_cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    /// Asks for a pause without waiting for it: before a VM's threads start, each then parks
    /// before its first guest instruction ([`Self::pause`] waits for them).
    pub fn request_pause(&self) {
        {
            let mut st = self.pause_state();
            st.requested = true;
            self.pause_flag.store(true, Ordering::SeqCst);
        }
        if let Err(e) = self.pause_evt.write(1) {
            warn!("vm: cannot ask the event loop to pause: {e}");
        }
    }

    /// Lets a paused VM run again, and returns once every parked thread is running.
    pub fn resume(&self) {
        let mut st = self.pause_state();
        st.requested = false;
        self.pause_flag.store(false, Ordering::SeqCst);
        self.pause_cond.notify_all();
        while (st.vcpus_parked > 0 || st.loop_parked) && !self.should_stop() {
            st = self.pause_cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the VM is paused (every thread parked).
    pub fn is_paused(&self) -> bool {
        let vcpus = self
            .vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let st = self.pause_state();
        st.requested && st.vcpus_parked >= vcpus && st.loop_parked
    }

    /// Called by vCPU `id`'s thread when it saw [`Self::should_pause`]: parks until resumed or
    /// stopped, answering requests for its state with `save` meanwhile.
    pub fn park_vcpu(
        &self,
        id: u8,
        mut save: impl FnMut() -> Result<crate::vcpu::VcpuState, String>,
    ) {
        let mut st = self.pause_state();
        if !st.requested || self.should_stop() {
            return;
        }
        st.vcpus_parked += 1;
        self.pause_cond.notify_all();
        let mut answered = st.save_generation;
        while st.requested && !self.should_stop() {
            if st.save_generation != answered {
                answered = st.save_generation;
                drop(st);
                let state = save();
                st = self.pause_state();
                if let Some(slot) = st.saved.get_mut(usize::from(id)) {
                    *slot = Some(state);
                }
                self.pause_cond.notify_all();
                continue;
            }
            st = self.pause_cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.vcpus_parked -= 1;
        self.pause_cond.notify_all();
    }

    /// Asks every parked vCPU of a paused VM for its state and returns them by index.
    pub fn vcpu_states(
        &self,
        timeout: Duration,
    ) -> Result<Vec<crate::vcpu::VcpuState>, PauseError> {
        let vcpus = self
            .vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let deadline = Instant::now() + timeout;
        let mut st = self.pause_state();
        if !st.requested {
            return Err(PauseError::Ended);
        }
        st.saved = (0..vcpus).map(|_| None).collect();
        st.save_generation += 1;
        self.pause_cond.notify_all();
        while st.saved.iter().any(Option::is_none) {
            if self.should_stop() {
                return Err(PauseError::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout(timeout));
            }
            st = self
                .pause_cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        std::mem::take(&mut st.saved)
            .into_iter()
            .map(|s| match s {
                Some(Ok(state)) => Ok(state),
                Some(Err(e)) => Err(PauseError::VcpuState(e)),
                None => Err(PauseError::Ended),
            })
            .collect()
    }

    /// Called by the event loop when asked to pause: parks until resumed or stopped.
    pub fn park_event_loop(&self) {
        self.park(|st, delta| st.loop_parked = delta > 0);
    }

    fn park(&self, mark: impl Fn(&mut PauseState, isize)) {
        let mut st = self.pause_state();
        if !st.requested || self.should_stop() {
            return;
        }
        mark(&mut st, 1);
        self.pause_cond.notify_all();
        while st.requested && !self.should_stop() {
            st = self.pause_cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        mark(&mut st, -1);
        self.pause_cond.notify_all();
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

    #[test]
    fn a_pause_completes_when_every_thread_parks_and_a_stop_releases_them() {
        let c = std::sync::Arc::new(VmControl::new().expect("eventfd"));
        // Two "vCPUs" (this thread's id stands in: kicks are harmless with the handler) and an
        // event loop, simulated by threads that park when asked.
        crate::vcpu::install_kick_handler().expect("handler");
        // SAFETY: pthread_self is always safe.
        let me = unsafe { libc::pthread_self() };
        c.set_vcpu_threads(vec![me, me]);
        let spawn_parker = |vcpu: bool| {
            let c = c.clone();
            std::thread::spawn(move || {
                while !c.should_pause() && !c.should_stop() {
                    std::thread::yield_now();
                }
                if vcpu {
                    c.park_vcpu(0, || Err("no state in this test".into()));
                } else {
                    c.park_event_loop();
                }
            })
        };
        let too_few = [spawn_parker(true), spawn_parker(false)];
        assert_eq!(
            c.pause(Duration::from_millis(200)),
            Err(PauseError::Timeout(Duration::from_millis(200))),
            "one vCPU never parked"
        );
        for t in too_few {
            t.join().expect("parker");
        }
        assert!(!c.should_pause(), "a failed pause resumes");
        let all = [spawn_parker(true), spawn_parker(true), spawn_parker(false)];
        c.pause(Duration::from_secs(10)).expect("all parked");
        assert!(c.is_paused());
        c.resume();
        assert!(!c.is_paused());
        for t in all {
            t.join().expect("parker");
        }
        let parked = [spawn_parker(true), spawn_parker(true), spawn_parker(false)];
        c.pause(Duration::from_secs(10)).expect("all parked");
        c.request_exit(ExitReason::Stopped);
        for t in parked {
            t.join().expect("a stop releases parked threads");
        }
        assert_eq!(c.pause(Duration::from_secs(1)), Err(PauseError::Ended));
    }
}
