//! The terminal side of the CLI: raw mode for an interactive stdin (always restored, also on
//! errors and signals), and a thread that turns stop signals into a VM stop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Puts a terminal in raw mode (no line editing, no echo, no output processing; Ctrl-C still
/// signals) and restores it when dropped. Does nothing when the file is not a terminal.
pub struct RawMode {
    // Its own descriptor of the terminal, so the restore works whoever closed theirs.
    file: Option<File>,
    saved: Option<libc::termios>,
}

impl RawMode {
    pub fn enter(file: &File) -> Self {
        let Ok(file) = file.try_clone() else {
            return Self {
                file: None,
                saved: None,
            };
        };
        let fd = file.as_raw_fd();
        let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `t` is a valid out-pointer for tcgetattr; we read it only on success.
        let saved = if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } == 0 {
            // SAFETY: tcgetattr succeeded and initialised `t`.
            Some(unsafe { t.assume_init() })
        } else {
            None
        };
        if let Some(orig) = saved {
            // For the panic hook and the SIGSYS reporter, which cannot run `Drop`.
            // SAFETY: `dup` of our open descriptor; the copy is never closed (process-wide).
            let keep = unsafe { libc::dup(fd) };
            if keep >= 0 {
                let _ = RESTORE.set((keep, orig));
            }
            let mut raw = orig;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
            raw.c_iflag &= !(libc::IXON | libc::ICRNL);
            // The guest's own terminal turns \n into \r\n already: its bytes go out unchanged.
            raw.c_oflag &= !libc::OPOST;
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            // SAFETY: `raw` is a fully initialised termios for this terminal.
            unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        }
        Self {
            file: Some(file),
            saved,
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let (Some(orig), Some(f)) = (self.saved, self.file.as_ref()) {
            // SAFETY: restores the attributes read in `enter` on our own open descriptor.
            unsafe { libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &orig) };
        }
    }
}

/// The terminal and its settings before raw mode, for the paths that end the process without
/// running destructors: a panic (release builds abort) and a seccomp kill.
static RESTORE: std::sync::OnceLock<(libc::c_int, libc::termios)> = std::sync::OnceLock::new();

/// Restores the terminal's settings from before raw mode, if it was changed. Async-signal-safe
/// (`tcsetattr` on a saved descriptor).
pub fn restore_terminal() {
    if let Some((fd, t)) = RESTORE.get() {
        // The bare TCSETS ioctl, which every thread's seccomp filter allows for this (glibc's
        // tcsetattr asks TCGETS first). The kernel reads its `struct termios`, which glibc's
        // begins with (flags, line discipline, the first 19 control characters).
        // SAFETY: restores attributes read by `RawMode::enter` on a descriptor kept for this.
        unsafe { libc::ioctl(*fd, libc::TCSETS, t as *const libc::termios) };
    }
}

/// Installs a panic hook that restores the terminal before the default report (a release
/// build then aborts, which runs no destructor).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default(info);
    }));
}

const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks the stop signals in this thread (and so in every thread it starts afterwards).
pub fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid pointers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in STOP_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        let set = set.assume_init();
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Starts a thread that turns the stop signals into a VM stop. SIGINT and SIGTERM ask the
/// guest to shut down (`stopper.request_shutdown()`) and force the stop after `grace`, or at
/// once on a second signal; SIGHUP and SIGQUIT, or a guest that cannot be asked, force it at
/// once. `on_signal` is told the first signal.
pub fn spawn_signal_thread(
    set: libc::sigset_t,
    seccomp: bool,
    grace: Duration,
    stopper: vmm::VmStopper,
    on_signal: impl Fn(i32) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ember-signals".into())
        .spawn(move || {
            if seccomp {
                if let Err(e) = vmm::seccomp::apply(
                    vmm::seccomp::ThreadKind::Main,
                    vmm::seccomp::SeccompMode::On,
                ) {
                    log::error!("signal thread: {e}");
                    return;
                }
            }
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid out-pointer.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            on_signal(sig);
            let graceful = matches!(sig, libc::SIGINT | libc::SIGTERM) && !grace.is_zero();
            if graceful && stopper.request_shutdown() {
                log::info!(
                    "asked the guest to shut down; stopping it in {:.1} s or at the next signal",
                    grace.as_secs_f64()
                );
                let ts = libc::timespec {
                    tv_sec: grace.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: grace.subsec_nanos() as libc::c_long,
                };
                // Returns on a second signal or when the grace period is over.
                // SAFETY: valid set and timeout pointers; the siginfo pointer may be null.
                let second = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
                if stopper.is_stopping() {
                    return; // the guest shut down; the VM is ending
                }
                if second > 0 {
                    log::warn!("second signal: stopping the guest now");
                } else {
                    log::warn!(
                        "the guest did not shut down within {:.1} s; stopping it",
                        grace.as_secs_f64()
                    );
                }
            }
            stopper.kill();
        })
        .map(|_| ())
}

/// Writes the decimal digits of `v` into `buf`, returning the used tail.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe calls: write(2) and _exit(2), both allowed by every filter.
    // In a SIGSYS from seccomp, si_syscall sits after si_call_addr (a pointer) in the union.
    let nr = if info.is_null() {
        u64::MAX
    } else {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS the
        // union holds { void *call_addr; int syscall; unsigned arch; } at offset 16.
        unsafe {
            *(info
                .cast::<u8>()
                .add(16 + std::mem::size_of::<usize>())
                .cast::<i32>()) as u64
        }
    };
    let mut digits = [0u8; 20];
    let parts: [&[u8]; 3] = [
        b"ember: seccomp: forbidden system call ",
        decimal(nr, &mut digits),
        b"; stopping\n",
    ];
    for p in parts {
        // SAFETY: writing a valid buffer to stderr.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // TCSETS is in every thread's filter for this.
    restore_terminal();
    // SAFETY: terminating the process from a signal handler.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

/// Installs the SIGSYS handler that names a forbidden system call before the process ends.
pub fn install_sigsys_reporter() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO is valid; sigaction gets
    // valid pointers.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = sigsys_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts a thread that hands each stop signal to `on_signal` (the API mode's controller
/// decides what a signal does: end a process without a VM, or stop the VM).
pub fn spawn_signal_forwarder(
    set: libc::sigset_t,
    seccomp: bool,
    on_signal: impl Fn(i32) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ember-signals".into())
        .spawn(move || {
            if seccomp {
                if let Err(e) = vmm::seccomp::apply(
                    vmm::seccomp::ThreadKind::Main,
                    vmm::seccomp::SeccompMode::On,
                ) {
                    log::error!("signal thread: {e}");
                    return;
                }
            }
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialised signal set and `sig` a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    on_signal(sig);
                }
            }
        })
        .map(|_| ())
}
