//! Snapshot and restore with tiny guests: a guest snapshotted in the middle of its work goes
//! on from exactly there when restored, as often as it is restored (rollback) and in several
//! VMs at once (clones); a snapshot that is missing, damaged or does not fit is refused with a
//! message before anything runs.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{blk_guest, require_kvm, sparse_file, tiny_guest};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitReason, Vm, VmConfig, VmHandle};

const T: Duration = Duration::from_secs(120);
/// Clones restored at once: more than the cores, not so many that kvm-pvm's emulator crawls
/// (eight on two cores did not print a line in six minutes on a slow host).
const CLONES: u8 = 3;

fn captured() -> (Console, Capture) {
    let out = Capture::new(8 << 20);
    (
        Console {
            output: ConsoleOutput::Capture(out.clone()),
            input: ConsoleInput::None,
        },
        out,
    )
}

fn snap_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An error and its sources on one line, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

fn end(mut vm: VmHandle) -> ExitReason {
    vm.wait_timeout(T).expect("the VM ends").reason
}

#[test]
fn a_restored_guest_and_its_clones_continue_exactly_where_the_snapshot_was() {
    if !require_kvm() {
        return;
    }
    const N: usize = 1500;
    let config = VmConfig::builder(tiny_guest())
        .cmdline(format!("action=pattern:{N}"))
        .memory_mib(64)
        .vcpus(2)
        .build()
        .expect("config");
    let (console, out) = captured();
    let vm = Vm::start_with_console(config, console).expect("start");
    wait_until("output", || out.text().lines().count() > 30);
    let dir = snap_dir("pattern");
    vm.pause().expect("pause");
    // What the guest had written before the snapshot, at least (more may sit in the console
    // buffer).
    let before = out.contents().len();
    let info = vm.snapshot(&dir).expect("snapshot");
    vm.resume();
    assert!(
        info.memory_bytes_written < info.ram_bytes / 4,
        "{info:?}: not sparse"
    );
    assert_eq!(end(vm), ExitReason::Status(0));
    let whole = out.contents();
    assert!(
        std::str::from_utf8(&whole).expect("text").lines().count() == N,
        "the original VM printed every line"
    );

    // One restore, then eight clones at once: each prints the same continuation.
    let mut rests = Vec::new();
    for round in 0..2 {
        let n = if round == 0 { 1 } else { 8 };
        let vms: Vec<_> = (0..n)
            .map(|_| {
                let (console, out) = captured();
                (Vm::restore(&dir, console).expect("restore"), out)
            })
            .collect();
        for (vm, out) in vms {
            assert_eq!(end(vm), ExitReason::Status(0));
            rests.push(out.contents());
        }
    }
    let rest = &rests[0];
    assert!(!rest.is_empty() && rest.len() < whole.len() - before + 4096);
    assert!(
        whole.ends_with(rest),
        "the restored output is not the original's continuation"
    );
    assert!(whole.len() - rest.len() >= before, "output repeated");
    for (i, r) in rests.iter().enumerate() {
        assert_eq!(r, rest, "restore {i} differs");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn disk_requests_continue_across_a_snapshot_with_none_lost_or_doubled() {
    if !require_kvm() {
        return;
    }
    const COUNT: usize = 300;
    let disk = sparse_file("snap-flush.img", 4 << 20);
    let config = VmConfig::builder(blk_guest())
        .cmdline(format!("action=flushloop count={COUNT}"))
        .memory_mib(64)
        .disk(&disk, false)
        .build()
        .expect("config");
    let (console, out) = captured();
    let vm = Vm::start_with_console(config, console).expect("start");
    wait_until("the first flushes", || out.text().contains("flushed 20\n"));
    let dir = snap_dir("flush");
    vm.pause().expect("pause");
    vm.snapshot(&dir).expect("snapshot");
    let at = out.text();
    // The original is killed: its disk lock goes, and the restored VM takes over the disk.
    let mut vm = vm;
    vm.kill();
    drop(vm);
    let (console, rest) = captured();
    let restored = Vm::restore(&dir, console).expect("restore");
    assert_eq!(end(restored), ExitReason::Status(0), "{}", rest.text());
    let text = at + &rest.text();
    let flushed: Vec<&str> = text.lines().filter(|l| l.starts_with("flushed ")).collect();
    let want: Vec<String> = (0..COUNT).map(|i| format!("flushed {i}")).collect();
    assert_eq!(flushed, want, "every request completes once, in order");
    let data = std::fs::read(&disk).expect("image");
    for i in 0..COUNT {
        assert_eq!(
            &data[i * 4096..(i + 1) * 4096],
            &common::blk_pattern(i as u32 + 1, 4096)[..],
            "block {i}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(disk);
}

#[test]
fn damaged_or_unfitting_snapshots_are_refused_before_anything_runs() {
    if !require_kvm() {
        return;
    }
    let disk = sparse_file("snap-bad.img", 1 << 20);
    let config = VmConfig::builder(tiny_guest())
        .cmdline("action=loop")
        .memory_mib(32)
        .disk(&disk, true)
        .build()
        .expect("config");
    let vm = Vm::start_with_console(config, captured().0).expect("start");
    wait_until("the guest to run", || {
        vm.snapshot(snap_dir("probe")).is_ok()
    });
    let good = snap_dir("good");
    vm.snapshot(&good).expect("snapshot");
    drop(vm);
    let restore_err = |dir: &std::path::Path| -> String {
        match Vm::restore(dir, captured().0) {
            Ok(_) => panic!("a bad snapshot was restored"),
            Err(e) => chain(&e),
        }
    };
    let copy = |name: &str| {
        let d = snap_dir(name);
        std::fs::create_dir_all(&d).expect("dir");
        for f in ["state", "memory", "description.json"] {
            std::fs::copy(good.join(f), d.join(f)).expect("copy");
        }
        d
    };
    let state = std::fs::read(good.join("state")).expect("state");

    let d = snap_dir("missing");
    assert!(
        restore_err(&d).contains("No such file"),
        "{}",
        restore_err(&d)
    );
    let d = copy("truncated");
    std::fs::write(d.join("state"), &state[..state.len() / 2]).expect("write");
    assert!(restore_err(&d).contains("truncated"), "{}", restore_err(&d));
    let d = copy("checksum");
    let mut bad = state.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    std::fs::write(d.join("state"), &bad).expect("write");
    assert!(restore_err(&d).contains("checksum"), "{}", restore_err(&d));
    let d = copy("version");
    let mut bad = state.clone();
    bad[8] = 77;
    std::fs::write(d.join("state"), &bad).expect("write");
    assert!(
        restore_err(&d).contains("version 77"),
        "{}",
        restore_err(&d)
    );
    let d = copy("nomemory");
    std::fs::remove_file(d.join("memory")).expect("rm");
    assert!(restore_err(&d).contains("memory"), "{}", restore_err(&d));
    let d = copy("shortmemory");
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("memory"))
        .and_then(|f| f.set_len(4096))
        .expect("truncate");
    assert!(restore_err(&d).contains("bytes"), "{}", restore_err(&d));
    let d = copy("disk");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(2 << 20))
        .expect("grow");
    assert!(restore_err(&d).contains("size"), "{}", restore_err(&d));
    // Nothing of the snapshot changed on disk.
    assert_eq!(std::fs::read(good.join("state")).expect("state"), state);
    for name in [
        "good",
        "probe",
        "missing",
        "truncated",
        "checksum",
        "version",
        "nomemory",
        "shortmemory",
        "disk",
    ] {
        let _ = std::fs::remove_dir_all(snap_dir(name));
    }
    let _ = std::fs::remove_file(disk);
}

#[test]
fn the_cli_snapshots_at_a_marker_and_a_restore_prints_exactly_the_rest() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let whole = common::run_ember(
        &["--kernel", &kernel, "--cmdline", "action=pattern:300"],
        b"",
        T,
    );
    assert_eq!(whole.code(), 0);
    let dir = snap_dir("cli");
    let d = dir.to_str().expect("utf-8");
    let first = common::run_ember(
        &[
            "--kernel",
            &kernel,
            "--cmdline",
            "action=pattern:300",
            "--snapshot",
            d,
            "--snapshot-on-marker",
            "line 100:",
        ],
        b"",
        T,
    );
    assert_eq!(first.code(), 0, "{}", first.stderr);
    assert!(
        first.stderr.contains("snapshot written to"),
        "{}",
        first.stderr
    );
    let rest = common::run_ember(&["--restore", d], b"", T);
    assert_eq!(rest.code(), 0, "{}", rest.stderr);
    assert_eq!(
        first.stdout + &rest.stdout,
        whole.stdout,
        "snapshot output and restore output together are the uninterrupted run"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn linux_snapshotted_when_ready_runs_each_restore_s_command_and_clones_run_their_own() {
    // Two vCPUs: the application processor is up when the snapshot is taken.
    if !require_kvm() {
        return;
    }
    // vsock sockets (the snapshot's, the restores' own).
    let socks = common::TempDir::new("snap-socks");
    let (vmlinux, _) = common::guest_kernel();
    let dir = snap_dir("linux");
    let d = dir.to_str().expect("utf-8");
    let snap = common::run_ember(
        &[
            "--kernel",
            vmlinux.to_str().expect("utf-8"),
            "--initrd",
            common::guest_initramfs().to_str().expect("utf-8"),
            "--cpus",
            "2",
            "--vsock",
            &format!("cid=3,socket={}", socks.0.join("snap.sock").display()),
            "--snapshot",
            d,
        ],
        b"",
        Duration::from_secs(600),
    );
    assert_eq!(snap.code(), 0, "{}\n{}", snap.stdout, snap.stderr);
    assert!(snap.stdout.contains("ember-init: ready"), "{}", snap.stdout);
    // The CLI: a command with exact arguments and its status; the second vCPU runs (SMP)
    // and timer interrupts arrive (sleep) after the restore.
    let r = common::run_ember(
        &[
            "--restore",
            d,
            "--vsock-socket",
            &socks.0.join("cli.sock").display().to_string(),
            "--",
            "sh",
            "-c",
            "echo \"restored <$1>\"; taskset 2 echo on-cpu1; sleep 0.2; echo slept; exit 5",
            "x",
            "a b",
        ],
        b"",
        T,
    );
    assert_eq!(r.code(), 5, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("restored <a b>\r\non-cpu1\r\nslept\r\n"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("Linux version"), "no boot: {}", r.stdout);
    // Clones at once in this process, each with its own command and its own vsock
    // socket: each says hello to a host listener of its own through the restored device.
    let hellos: Vec<_> = (0..CLONES)
        .map(|i| {
            let l =
                std::os::unix::net::UnixListener::bind(socks.0.join(format!("clone{i}.sock_6000")))
                    .expect("host listener");
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().expect("the clone connects");
                let mut got = String::new();
                std::io::Read::read_to_string(&mut s, &mut got).expect("hello");
                std::io::Write::write_all(&mut s, b"pong").expect("reply");
                got
            })
        })
        .collect();
    let clones: Vec<_> = (0..CLONES)
        .map(|i| {
            let (console, out) = captured();
            let argv = vec![
                "sh".to_string(),
                "-c".into(),
                format!(
                    "echo clone-{i} id=$EMBER_CLONE_ID rnd=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); xfer say vsock 2 6000 hello-{i}; exit {}",
                    10 + i
                ),
            ];
            let options = vmm::RestoreOptions {
                command: Some(argv),
                vsock_socket: Some(socks.0.join(format!("clone{i}.sock"))),
                ..Default::default()
            };
            (
                i,
                Vm::restore_with(&dir, console, options).expect("restore"),
                out,
            )
        })
        .collect();
    let mut identities = std::collections::HashSet::new();
    for (i, vm, out) in clones {
        let mut vm = vm;
        // Guests share this host's cores: each gets longer than one alone would.
        let reason = vm
            .wait_timeout(3 * T)
            .unwrap_or_else(|| panic!("clone {i} did not end: {}", out.text()))
            .reason;
        assert_eq!(reason, ExitReason::Status(10 + i), "{}", out.text());
        let text = out.text();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("clone-{i} ")))
            .unwrap_or_else(|| panic!("clone {i} printed {text:?}"));
        // Each clone knows it is one (its id) and has randomness of its own.
        let (id, rnd) = line
            .split_once(" id=")
            .and_then(|(_, r)| r.split_once(" rnd="))
            .expect("id and random bytes");
        assert_eq!(id.len(), 16, "{line}");
        assert_eq!(rnd.trim().len(), 32, "{line}");
        assert!(
            identities.insert(id.to_string()),
            "two clones share id {id}"
        );
        assert!(
            identities.insert(rnd.trim().to_string()),
            "two clones share randomness"
        );
        assert!(
            text.contains("xfer: reply pong"),
            "clone {i}'s vsock: {text}"
        );
    }
    for (i, h) in hellos.into_iter().enumerate() {
        assert_eq!(h.join().expect("listener"), format!("hello-{i}"));
    }
    // A clone serving on vsock: the host reaches it through its own socket.
    let (console, out) = captured();
    let sock = socks.0.join("server.sock");
    let mut server = Vm::restore_with(
        &dir,
        console,
        vmm::RestoreOptions {
            command: Some(vec![
                "xfer".into(),
                "echo".into(),
                "vsock".into(),
                "5000".into(),
            ]),
            vsock_socket: Some(sock.clone()),
            ..Default::default()
        },
    )
    .expect("restore");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.text().contains("xfer: listening") {
        assert!(Instant::now() < deadline, "{}", out.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    std::io::Write::write_all(&mut s, b"CONNECT 5000\n").expect("connect line");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let mut reader = std::io::BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).expect("OK line");
    assert!(line.starts_with("OK "), "{line:?}");
    std::io::Write::write_all(&mut s, &data).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut back).expect("echo");
    assert!(back == data, "the restored guest's echo differs");
    server.kill();
    drop(server);
    assert!(!sock.exists(), "the clone's socket file is left behind");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn clones_cannot_share_a_read_write_disk() {
    if !require_kvm() {
        return;
    }
    let disk = sparse_file("snap-rw.img", 1 << 20);
    let config = VmConfig::builder(tiny_guest())
        .cmdline("action=loop")
        .memory_mib(32)
        .disk(&disk, false)
        .build()
        .expect("config");
    let mut vm = Vm::start_with_console(config, captured().0).expect("start");
    let dir = snap_dir("rw");
    vm.snapshot(&dir).expect("snapshot");
    vm.kill();
    drop(vm);
    let mut first = Vm::restore(&dir, captured().0).expect("the first restore takes the disk");
    match Vm::restore(&dir, captured().0) {
        Ok(_) => panic!("two VMs write one disk"),
        Err(e) => {
            let s = chain(&e);
            assert!(s.contains("in use by another VM or process"), "{s}");
        }
    }
    first.kill();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(disk);
}

#[test]
fn local_apic_timer_interrupts_go_on_counting_after_a_restore() {
    if !require_kvm() {
        return;
    }
    // The blk guest wants a disk to exist, even for an action that does not use it.
    let disk = sparse_file("snap-timer.img", 1 << 20);
    let config = VmConfig::builder(blk_guest())
        .cmdline("action=timer count=300")
        .memory_mib(64)
        .disk(&disk, true)
        .build()
        .expect("config");
    let (console, out) = captured();
    let vm = Vm::start_with_console(config, console).expect("start");
    wait_until("ticks", || out.text().contains("tick 50\n"));
    let dir = snap_dir("timer");
    vm.pause().expect("pause");
    vm.snapshot(&dir).expect("snapshot");
    vm.resume();
    assert_eq!(end(vm), ExitReason::Status(0), "{}", out.text());
    let (console, rest) = captured();
    let restored = Vm::restore(&dir, console).expect("restore");
    assert_eq!(end(restored), ExitReason::Status(0), "{}", rest.text());
    let text = rest.text();
    let ticks: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.first().is_some_and(|&t| t >= 50), "{text}");
    assert_eq!(ticks.last(), Some(&300), "{text}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 10),
        "the count goes on without a gap or a repeat: {ticks:?}"
    );
    assert!(
        text.contains("timer: other=0"),
        "no stray interrupt: {text}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(disk);
}
