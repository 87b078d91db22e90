//! What a program that embeds Ember can count on: its own code running on a VM's threads (the
//! console writer) can neither kill the process through the seccomp filters nor leave the VM
//! running or `wait()` hanging by panicking.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{require_kvm, tiny_guest};
use vmm::{Console, ConsoleInput, ConsoleOutput, ExitReason, Vm, VmConfig};

const T: Duration = Duration::from_secs(60);

fn start_with_writer(w: impl Write + Send + 'static, cmdline: &str) -> vmm::VmHandle {
    let config = VmConfig::builder(tiny_guest())
        .cmdline(cmdline)
        .memory_mib(32)
        .build()
        .expect("config");
    let console = Console {
        output: ConsoleOutput::Writer(Box::new(w)),
        input: ConsoleInput::None,
    };
    Vm::start_with_console(config, console).expect("start")
}

/// A console writer that makes a system call no VM thread's filter allows (an IP socket: the
/// event loop may open Unix sockets only, for vsock).
struct SocketOpener(std::sync::Arc<std::sync::atomic::AtomicI64>);
impl Write for SocketOpener {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: a plain system call; a descriptor it returns is closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        let err = if fd < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        };
        self.0
            .store(i64::from(err), std::sync::atomic::Ordering::SeqCst);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_console_writer_outside_the_filter_is_refused_not_killed() {
    if !require_kvm() {
        return;
    }
    // The library's default filters refuse the call (EPERM) instead of killing the process.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let mut vm = start_with_writer(
        SocketOpener(seen.clone()),
        "action=print say=hello status=5",
    );
    let exit = vm.wait_timeout(T).expect("the VM ends");
    assert_eq!(exit.reason, ExitReason::Status(5));
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        i64::from(libc::EPERM),
        "the writer ran under the VM thread's filter and its call was refused"
    );
}

struct Panicker;
impl Write for Panicker {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        panic!("the embedder's console writer panics");
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_panic_on_a_vm_thread_ends_the_vm_with_a_host_error_and_wait_returns() {
    if !require_kvm() {
        return;
    }
    // The guest prints and then spins: only the panic can end it.
    let mut vm = start_with_writer(Panicker, "action=loop");
    let exit = vm.wait_timeout(T).expect("wait() returns after the panic");
    assert!(
        matches!(&exit.reason, ExitReason::HostError(m) if m.contains("panicked")),
        "{:?}",
        exit.reason
    );
}
