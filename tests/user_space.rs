//! Guest user space with the project's kernel and init, as users see it: an interactive shell
//! on a real pseudo-terminal, commands with their arguments and exit statuses (from the CLI and
//! from 4 library VMs at once), and a graceful stop that leaves an ext4 root clean. On
//! kvm-pvm hosts this works because the project's kernel finishes the half-done SYSCALL
//! (resources/kernel/patches/0006-*); a guest whose user space does not come up fails these
//! tests, it never skips them.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    copy_to_temp, ember_bin, guest_initramfs, guest_kernel, guest_rootfs, lflag, pty, require_kvm,
    run_ember,
};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitReason, Vm, VmConfig};

/// Deadline for one Linux boot and its command (tens of seconds under kvm-pvm; generous for a
/// loaded machine, so that a hang fails instead of stalling the suite).
const T: Duration = Duration::from_secs(600);

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Waits until `text` appears in what `buf` has collected, or panics after `deadline`.
fn wait_for(buf: &Mutex<Vec<u8>>, text: &str, deadline: Instant) {
    loop {
        {
            let b = buf.lock().expect("buffer");
            if String::from_utf8_lossy(&b).contains(text) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never appeared; the terminal showed:\n{}",
            String::from_utf8_lossy(&buf.lock().expect("buffer"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_interactive_shell_runs_on_a_real_terminal_and_ctrl_c_shuts_the_guest_down() {
    if !require_kvm() {
        return;
    }
    let (vmlinux, _) = guest_kernel();
    let p = pty();
    let before = lflag(&p.slave);
    let slave = p.slave.try_clone().expect("dup");
    let (o, e) = (
        slave.try_clone().expect("dup"),
        slave.try_clone().expect("dup"),
    );
    let mut cmd = Command::new(ember_bin());
    cmd.args([
        "--kernel",
        s(vmlinux),
        "--initrd",
        s(guest_initramfs()),
        "--stop-grace",
        "300",
    ])
    .stdin(Stdio::from(slave))
    .stdout(Stdio::from(o))
    .stderr(Stdio::from(e));
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the pty its controlling
    // terminal, so Ctrl-C typed on it is a SIGINT to ember, as in a user's terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn ember");
    // The command holds slave descriptors: they must go for the master to see the end.
    drop(cmd);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut master = std::fs::File::from(p.master.try_clone().expect("dup"));
    let reader = {
        let (screen, mut m) = (screen.clone(), master.try_clone().expect("dup"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every slave descriptor is closed.
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = Instant::now() + T;
    wait_for(&screen, "/ # ", deadline);
    assert_eq!(
        lflag(&p.slave) & (libc::ICANON | libc::ECHO),
        0,
        "raw while the VM runs"
    );
    master
        .write_all(b"echo \"sum=$((6*7))\"; tty\r")
        .expect("type");
    wait_for(&screen, "sum=42\r\n/dev/ttyS0\r\n/ # ", deadline);
    // Ctrl-C on the host terminal: ember asks the guest to shut down (Ctrl+Alt+Del) and the
    // guest's init ends its processes and powers off well before the grace period.
    master.write_all(&[0x03]).expect("type Ctrl-C");
    let out = common::output_within(child, T);
    assert_eq!(out.status.code(), Some(128 + libc::SIGINT));
    wait_for(&screen, "ember-init: Ctrl+Alt+Del: shutting down", deadline);
    let shown = String::from_utf8_lossy(&screen.lock().expect("screen")).into_owned();
    assert!(
        !shown.contains("did not shut down"),
        "the guest had to be stopped by force:\n{shown}"
    );
    assert_eq!(lflag(&p.slave), before, "the terminal is restored");
    drop(p);
    drop(master);
    let _ = reader.join();
}

#[test]
fn a_command_gets_its_exact_arguments_and_ember_exits_with_its_status() {
    if !require_kvm() {
        return;
    }
    let (vmlinux, _) = guest_kernel();
    let args = [
        "a b",
        "it's",
        "say \"hi\"",
        "two\nlines",
        "é 日本",
        "$HOME `x` *",
    ];
    let mut argv = vec![
        "--kernel",
        s(vmlinux),
        "--initrd",
        s(guest_initramfs()),
        "--",
        "sh",
        "-c",
        "printf '<%s>\\n' \"$@\"; exit 7",
        "sh",
    ];
    argv.extend_from_slice(&args);
    let r = run_ember(&argv, b"", T);
    assert_eq!(r.code(), 7, "{r:?}");
    // The guest's terminal turns each \n into \r\n.
    let expected: String = args
        .iter()
        .map(|a| format!("<{}>\r\n", a.replace('\n', "\r\n")))
        .collect();
    assert!(r.stdout.contains(&expected), "{}", r.stdout);
}

/// What VM `i` of the four runs, and what it must end with.
fn nth_command(i: usize) -> (Vec<String>, ExitReason, Option<String>) {
    let sh = |script: &str| -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            i.to_string(),
        ]
    };
    match i {
        12 => (
            vec!["no-such-command".into(), "x".into()],
            ExitReason::Status(127),
            Some("ember-init: no-such-command: command not found".into()),
        ),
        13 => (
            sh("echo vm-$1; kill -9 $$"),
            ExitReason::Status(128 + 9),
            Some(format!("vm-{i}")),
        ),
        14 => (
            vec!["poweroff".into(), "-f".into()],
            ExitReason::PowerOff,
            None,
        ),
        _ => (
            sh("echo vm-$1; exit $(($1 * 3))"),
            ExitReason::Status((i * 3) as u8),
            Some(format!("vm-{i}")),
        ),
    }
}

#[test]
fn four_library_vms_each_run_their_own_command_and_get_its_status() {
    if !require_kvm() {
        return;
    }
    let (vmlinux, _) = guest_kernel();
    let initrd = guest_initramfs();
    let mut vms = Vec::new();
    // Four: more guests than cores, not so many that the emulator crawls (see boot_linux.rs).
    for i in 0..4 {
        let (argv, _, _) = nth_command(i);
        let config = VmConfig::builder(vmlinux)
            .initrd(initrd)
            .memory_mib(128)
            .command(argv)
            .build()
            .expect("config");
        let out = Capture::default();
        let console = Console {
            output: ConsoleOutput::Capture(out.clone()),
            input: ConsoleInput::None,
        };
        vms.push((Vm::start_with_console(config, console).expect("start"), out));
    }
    let deadline = Instant::now() + T;
    for (i, (mut vm, out)) in vms.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let exit = vm
            .wait_timeout(left)
            .unwrap_or_else(|| panic!("VM {i} did not end:\n{}", out.text()));
        let (_, want, line) = nth_command(i);
        let text = out.text();
        assert_eq!(exit.reason, want, "VM {i}:\n{text}");
        if let Some(line) = line {
            assert!(text.contains(&format!("{line}\r\n")), "VM {i}:\n{text}");
        }
        for j in (0..4).filter(|&j| j != i) {
            assert!(
                !text.contains(&format!("vm-{j}\r\n")),
                "VM {i} shows VM {j}'s output"
            );
        }
    }
}

fn e2fsck(image: &std::path::Path) -> std::process::Output {
    Command::new("e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs) is needed")
}

#[test]
fn stop_shuts_the_guest_down_cleanly_and_its_ext4_root_is_clean_with_the_file() {
    if !require_kvm() {
        return;
    }
    let (vmlinux, _) = guest_kernel();
    let root = copy_to_temp(guest_rootfs(), "stop-root.ext4");
    // No sync in the guest: the shutdown must write the file back and leave the journal clean.
    let config = VmConfig::builder(vmlinux)
        .disk(&root, false)
        .command([
            "sh",
            "-c",
            "echo kept-by-stop > /hello.txt && echo written && exec sleep 100000",
        ])
        .build()
        .expect("config");
    let out = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(out.clone()),
        input: ConsoleInput::None,
    };
    let mut vm = Vm::start_with_console(config, console).expect("start");
    let deadline = Instant::now() + T;
    while !out.text().contains("written\r\n") {
        assert!(
            Instant::now() < deadline && !vm.has_ended(),
            "the guest never wrote:\n{}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = vm.stop(Duration::from_secs(300));
    let text = out.text();
    assert_eq!(
        exit.reason,
        ExitReason::PowerOff,
        "the guest did not power off by itself:\n{text}"
    );
    assert!(
        text.contains("ember-init: Ctrl+Alt+Del: shutting down"),
        "{text}"
    );
    let fsck = e2fsck(&root);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "e2fsck -fn:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&root)
        .output()
        .expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "kept-by-stop\n");
    let _ = std::fs::remove_file(root);
}

#[test]
fn the_library_refuses_a_command_too_long_for_the_kernel_command_line() {
    let (vmlinux, _) = guest_kernel();
    let config = VmConfig::builder(vmlinux)
        .initrd(guest_initramfs())
        .command(["echo".to_string(), "x".repeat(4000)])
        .build()
        .expect("config");
    let e = Vm::start(config).expect_err("too long");
    let msg = e.to_string();
    assert!(msg.contains("command line"), "{msg}");
    // And the CLI says so on one line, before anything runs.
    let long = "y".repeat(4000);
    let r = run_ember(
        &[
            "--kernel",
            s(vmlinux),
            "--initrd",
            s(guest_initramfs()),
            "--",
            "echo",
            &long,
        ],
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(r.code(), 1, "{r:?}");
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| !l.contains("kvm-pvm host"))
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "the guest must not start");
}
