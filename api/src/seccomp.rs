//! The API thread's seccomp-bpf allow-list (rust-vmm's seccompiler), kept as reviewed data in
//! `api/seccomp/x86_64.json`, as the VM threads' lists are in `vmm/seccomp/x86_64.json`: the
//! thread that reads what clients send may poll, accept, read and write sockets, close them,
//! use the channel to the VMM thread (futex), allocate and exit; nothing else (no `open`, no
//! `socket`, no `ioctl`, no `execve`). A forbidden call does what the mode says
//! (`vmm::seccomp::SeccompMode`): SIGSYS with `On`, `EPERM` with `Deny`.

use seccompiler::{BpfMap, BpfProgram};
use vmm::seccomp::SeccompMode;

const FILTERS: &str = include_str!("../seccomp/x86_64.json");

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The JSON does not compile.
    #[error("Cannot compile the API thread's seccomp filter: {0}")]
    Compile(String),
    /// The kernel refused it.
    #[error("Cannot install the API thread's seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

fn compile(deny: bool) -> Result<BpfProgram, SeccompError> {
    let json = if deny {
        FILTERS.replace(
            r#""mismatch_action": "trap""#,
            &format!(r#""mismatch_action": {{"errno": {}}}"#, libc::EPERM),
        )
    } else {
        FILTERS.to_string()
    };
    let mut map: BpfMap =
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
    map.remove("api")
        .ok_or_else(|| SeccompError::Compile("no \"api\" filter".into()))
}

/// The compiled program for `mode` (`Off` gets `On`'s), built before the thread starts so a
/// broken list fails the start, not the thread.
pub fn program(mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    compile(mode == SeccompMode::Deny)
}

/// Installs `program` on the calling thread.
pub fn apply(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_forbids_opening_files() {
        assert!(!program(SeccompMode::On).expect("compiles").is_empty());
        let prog = program(SeccompMode::Deny).expect("compiles");
        // SAFETY: fork in a test; the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: exiting the child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: a plain system call on a static NUL-terminated path.
            let r = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            // SAFETY: reading errno right after the call.
            let e = unsafe { *libc::__errno_location() };
            // SAFETY: exiting the child.
            unsafe { libc::_exit(if r == -1 && e == libc::EPERM { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "open was refused with EPERM");
    }
}
