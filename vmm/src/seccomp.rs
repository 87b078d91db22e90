//! seccomp-bpf filters (rust-vmm's seccompiler), one allow-list per thread kind, kept as
//! reviewed data in `vmm/seccomp/x86_64.json`:
//! - `vcpu`: vCPU threads: `KVM_RUN`, `KVM_GET_REGS` and `KVM_SET_GSI_ROUTING` (the I/O APIC) only
//!   among ioctls; console and eventfd writes; allocation; locks; the kick signal; thread exit.
//! - `vmm`: the event-loop thread: epoll, eventfd and console reads and writes, virtio-blk
//!   I/O (`preadv`, `pwritev`, `fdatasync`), `tgkill` to kick vCPUs, teardown.
//! - `main`: the `ember` CLI's own threads once the VM runs (waiting, terminal restore, KVM's
//!   exit counters read with `pread`).
//!
//! Each thread installs its filter itself, before the guest's first instruction for vCPU and
//! event-loop threads. What a call outside the list does depends on the mode:
//! [`SeccompMode::On`] (the `ember` CLI) raises SIGSYS (`SECCOMP_RET_TRAP`), which kills the
//! process (the CLI names the call first); [`SeccompMode::Deny`], the library's default, fails
//! the call with `EPERM`: the call is refused all the same, but a program that embeds Ember is
//! not killed because its console writer or logger, which run on VM threads, made a call
//! the list does not have.

use seccompiler::{BpfMap, BpfProgram};
use serde::{Deserialize, Serialize};

const FILTERS: &str = include_str!("../seccomp/x86_64.json");

/// Which filter a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// A VM's event-loop thread.
    Vmm,
    /// The embedding program's threads (the `ember` CLI's main and signal threads).
    Main,
}

impl ThreadKind {
    fn key(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::Vmm => "vmm",
            Self::Main => "main",
        }
    }
}

/// Whether VM threads run under seccomp, and what a forbidden call does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Filters on every VM thread; a forbidden call kills the process (SIGSYS).
    On,
    /// Filters on every VM thread; a forbidden call fails with `EPERM` (the library's default).
    #[default]
    Deny,
    /// No filters (debugging only).
    Off,
}

impl SeccompMode {
    /// Whether VM threads get filters.
    pub fn filters(self) -> bool {
        self != Self::Off
    }
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter data does not compile.
    #[error("Cannot compile the seccomp filters: {0}")]
    Compile(String),
    /// The filter for a thread kind is missing.
    #[error("No seccomp filter for {0} threads")]
    Missing(&'static str),
    /// The kernel refused the filter.
    #[error("Cannot install the seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

/// All filters, compiled once per process: with SIGSYS for forbidden calls, or with EPERM.
fn filters(deny: bool) -> Result<&'static BpfMap, SeccompError> {
    static TRAP: std::sync::OnceLock<Result<BpfMap, String>> = std::sync::OnceLock::new();
    static EPERM: std::sync::OnceLock<Result<BpfMap, String>> = std::sync::OnceLock::new();
    let compile = |json: &str| {
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .map_err(|e| e.to_string())
    };
    if deny {
        EPERM.get_or_init(|| {
            compile(&FILTERS.replace(
                r#""mismatch_action": "trap""#,
                &format!(r#""mismatch_action": {{"errno": {}}}"#, libc::EPERM),
            ))
        })
    } else {
        TRAP.get_or_init(|| compile(FILTERS))
    }
    .as_ref()
    .map_err(|e| SeccompError::Compile(e.clone()))
}

/// The compiled program for `kind` in `mode` (`Off` gets `On`'s).
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Result<&'static BpfProgram, SeccompError> {
    filters(mode == SeccompMode::Deny)?
        .get(kind.key())
        .ok_or(SeccompError::Missing(kind.key()))
}

/// Installs `kind`'s filter on the calling thread.
pub fn apply(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program(kind, mode)?).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ioctl numbers in the JSON, against the kernel's encoding of the structures the
    /// kvm-bindings crate defines (a wrong number would refuse a snapshot, not fail a build).
    #[test]
    fn the_snapshot_ioctl_numbers_match_their_structures() {
        use kvm_bindings::*;
        let ior = |nr: u32, size: usize| (2u32 << 30) | ((size as u32) << 16) | (0xae << 8) | nr;
        let iowr = |nr: u32, size: usize| (3u32 << 30) | ((size as u32) << 16) | (0xae << 8) | nr;
        let want = [
            ior(0x98, std::mem::size_of::<kvm_mp_state>()),
            ior(0x83, std::mem::size_of::<kvm_sregs>()),
            ior(0xa4, std::mem::size_of::<kvm_xsave>()),
            ior(0xa6, std::mem::size_of::<kvm_xcrs>()),
            ior(0xa1, std::mem::size_of::<kvm_debugregs>()),
            ior(0x8e, std::mem::size_of::<kvm_lapic_state>()),
            iowr(0x88, std::mem::size_of::<kvm_msrs>()),
            ior(0x9f, std::mem::size_of::<kvm_vcpu_events>()),
            iowr(0x91, std::mem::size_of::<kvm_cpuid2>()),
            ior(0x81, std::mem::size_of::<kvm_regs>()),
        ];
        for w in want {
            assert!(
                FILTERS.contains(&format!("\"val\": {w},")),
                "ioctl {w:#x} missing"
            );
        }
    }

    #[test]
    fn every_filter_compiles() {
        for k in [ThreadKind::Vcpu, ThreadKind::Vmm, ThreadKind::Main] {
            for m in [SeccompMode::On, SeccompMode::Deny] {
                assert!(!program(k, m).expect("compiles").is_empty());
            }
        }
    }

    #[test]
    fn a_filtered_thread_is_killed_by_a_forbidden_call() {
        // In a child process: install the vCPU filter, then make a call it does not allow.
        // The program is compiled before the fork: the child must not allocate.
        let prog = program(ThreadKind::Vcpu, SeccompMode::On).expect("compiles");
        // SAFETY: fork in a test; the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(prog).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: a plain system call, forbidden for vCPU threads.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: exiting the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn in_deny_mode_a_forbidden_call_fails_with_eperm() {
        let prog = program(ThreadKind::Vcpu, SeccompMode::Deny).expect("compiles");
        // SAFETY: fork in a test; the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(prog).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: a plain system call, forbidden for vCPU threads.
            let r = unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: reading errno right after the call.
            let e = unsafe { *libc::__errno_location() };
            // SAFETY: exiting the child.
            unsafe { libc::_exit(if r == -1 && e == libc::EPERM { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the call failed with EPERM");
    }
}
