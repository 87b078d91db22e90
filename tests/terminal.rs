//! A terminal on stdin goes to raw mode while the VM runs and is restored afterwards: after
//! the guest ends, after a start-up error and after a signal.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ember_bin, lflag, pty, require_kvm, tiny_guest, ChildExt, Pty};

fn spawn_on(p: &Pty, args: &[&str]) -> std::process::Child {
    let stdin = p.slave.try_clone().expect("dup");
    Command::new(ember_bin())
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[test]
fn raw_mode_is_restored_after_exit_error_and_signal() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let p = pty();
    let before = lflag(&p.slave);
    assert_ne!(before & libc::ICANON, 0, "a fresh pty is canonical");

    // A guest that ends by itself.
    let out = spawn_on(&p, &["--kernel", &kernel, "--cmdline", "action=exit:0"])
        .wait_with_output_within();
    assert!(out.status.success());
    assert_eq!(lflag(&p.slave), before);

    // A start-up error.
    let out = spawn_on(&p, &["--kernel", "/proc/self/status"]).wait_with_output_within();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lflag(&p.slave), before);

    // A signal while the guest runs: raw mode while running, restored after.
    let mut child = spawn_on(&p, &["--kernel", &kernel, "--cmdline", "action=loop"]);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 14];
    std::io::Read::read_exact(&mut stdout, &mut buf).expect("guest runs");
    assert_eq!(
        lflag(&p.slave) & (libc::ICANON | libc::ECHO),
        0,
        "raw while the VM runs"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = common::wait_within(&mut child, common::WAIT_LIMIT);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(lflag(&p.slave), before);
    drop(p.master);
}

#[test]
fn the_terminal_is_restored_after_a_panic_and_a_seccomp_kill() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let p = pty();
    let before = lflag(&p.slave);
    let args = ["--kernel", kernel.as_str(), "--cmdline", "action=loop"];
    for (var, value) in [
        ("EMBER_PANIC_SELFTEST", "1"),
        ("EMBER_SECCOMP_SELFTEST", "vcpu"),
    ] {
        let stdin = p.slave.try_clone().expect("dup");
        let out = Command::new(ember_bin())
            .args(args)
            .env(var, value)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
            .wait_with_output_within();
        assert!(!out.status.success(), "{var}: {out:?}");
        assert_eq!(lflag(&p.slave), before, "{var}: the terminal is left raw");
    }
}
