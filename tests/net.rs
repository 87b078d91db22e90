//! virtio-net over a TAP, in a private network namespace the test makes (root is needed: under
//! `CI=true` the test fails without it, elsewhere it says it is skipped). The guest kernel
//! configures eth0 by itself (`ip=`) and answers ARP and ICMP with no user space: a ping from
//! the namespace proves both directions, with small frames and large ones the guest must
//! reassemble from fragments; the guest's `xfer` (in the initramfs) sends 4 MiB over TCP to an
//! echo server in the namespace and checks what comes back. Nothing leaves the machine.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ember_bin, guest_initramfs, guest_kernel, require_kvm, ConsoleChild};

fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the network test needs root (network namespaces, TAP devices) and CI=true");
    }
    eprintln!("SKIPPED: the network test needs root");
    false
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private namespace with `tap0` at 172.30.77.1/24, up. Installs `ip` and `ping` first on a
/// machine that lacks them (as the artefact builders install theirs).
fn netns_with_tap(tag: &str) -> testkit::Netns {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/lib.sh");
    sh(&[
        "bash",
        "-c",
        &format!("source {lib} && ensure_packages iproute2 iputils-ping"),
    ]);
    testkit::Netns::create(tag).unwrap_or_else(|e| panic!("network namespace: {e}"))
}

#[test]
fn a_hostile_guest_scribbling_over_the_network_card_does_not_hurt_ember() {
    if !require_kvm() || !require_root() {
        return;
    }
    let ns = netns_with_tap("hostile");
    let disk = common::sparse_file("net-hostile.img", 1 << 20);
    let dir = common::TempDir::new("net-hostile");
    let vsock = dir.0.join("v.sock");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, ember_bin()])
        .args([
            "--kernel",
            common::blk_guest().to_str().expect("utf-8"),
            "--memory",
            "64M",
            "--cmdline",
            "action=hostile",
            "--disk",
            disk.to_str().expect("utf-8"),
            "--net",
            "tap=tap0",
            "--vsock",
            &format!("cid=3,socket={}", vsock.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = common::output_within(child, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("hostile: other devices=2\n"),
        "the network card and the vsock device were scribbled over: {stdout}"
    );
    assert!(stdout.contains("hostile: disk0 good status=0"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.lines().count() < 40,
        "the guest flooded the log:\n{stderr}"
    );
    let _ = std::fs::remove_file(disk);
}

/// A TCP echo server at `addr` inside namespace `ns` (bound from a thread that entered it);
/// serves one connection and returns what it received.
fn echo_server_in(ns: &str, addr: &str) -> std::thread::JoinHandle<Vec<u8>> {
    let (ns, addr) = (ns.to_string(), addr.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        testkit::enter_netns(&ns).expect("into the namespace");
        let l = std::net::TcpListener::bind(&addr).expect("bind in the namespace");
        ready_tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("the guest connects");
        s.set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        common::echo_stream(&mut s)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the echo server listens");
    t
}

/// Opens `tap` inside namespace `ns` (from a thread that entered it) as a service that makes
/// its own TAPs would: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, inheritable by a child.
fn tap_fd_in(ns: &str, tap: &str) -> i32 {
    let (ns, tap) = (ns.to_string(), tap.to_string());
    std::thread::spawn(move || {
        testkit::enter_netns(&ns).expect("into the namespace");
        let tap = devices::virtio::net::Tap::open(&tap).expect("the TAP");
        // A duplicate without close-on-exec, for the child to inherit.
        // SAFETY: fcntl on the TAP's own descriptor; the new one is left open on purpose.
        let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&tap), libc::F_DUPFD, 0) };
        assert!(fd >= 0, "dup: {}", std::io::Error::last_os_error());
        fd
    })
    .join()
    .expect("tap")
}

#[test]
fn the_guest_answers_ping_and_moves_tcp_bytes_exactly_through_virtio_net() {
    if !require_kvm() || !require_root() {
        return;
    }
    let ns = netns_with_tap("ping");
    let tcp_bytes: u64 = 4 << 20;
    let server = echo_server_in(&ns.0, "172.30.77.1:7000");
    let (vmlinux, _) = guest_kernel();
    let cmdline = format!(
        "{} ip=172.30.77.2::172.30.77.1:255.255.255.0::eth0:off",
        vmm::DEFAULT_CMDLINE
    );
    // The TAP as a descriptor handed over by its creator (the other test attaches by name);
    // Ember itself runs outside the namespace.
    let tap = tap_fd_in(&ns.0, "tap0");
    let mut vm = ConsoleChild::spawn(Command::new(ember_bin()).args([
        "--kernel",
        vmlinux.to_str().expect("utf-8"),
        "--initrd",
        guest_initramfs().to_str().expect("utf-8"),
        "--net",
        &format!("fd={tap},mac=06:00:ac:1e:4d:02"),
        "--cmdline",
        &cmdline,
        "--",
        "sh",
        "-c",
        &format!("xfer check tcp 172.30.77.1 7000 {tcp_bytes} && sleep 600"),
    ]));
    let t = Instant::now();
    let text = vm.wait_for("xfer: check", Duration::from_secs(1200));
    assert!(
        text.contains("IP-Config: Complete") || text.contains("172.30.77.2"),
        "eth0 was not configured:\n{text}"
    );
    assert!(
        text.contains(&format!("xfer: check ok {tcp_bytes} bytes")),
        "the guest's bytes did not come back exactly:\n{text}"
    );
    let got = server.join().expect("echo server");
    assert_eq!(got.len() as u64, tcp_bytes);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &b)| b == common::xfer_pattern(i as u64)),
        "the namespace received other bytes than the guest sent"
    );
    eprintln!(
        "net: {tcp_bytes} bytes each way, boot included, in {:?}",
        t.elapsed()
    );
    for size in ["56", "1400", "4000"] {
        let ping = Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "ping", "-c", "5", "-i", "0.2", "-W", "10",
            ])
            .args(["-s", size, "172.30.77.2"])
            .output()
            .expect("ping");
        let report = String::from_utf8_lossy(&ping.stdout);
        assert!(
            ping.status.success() && report.contains("5 received"),
            "ping -s {size}:\n{report}\n{}",
            String::from_utf8_lossy(&ping.stderr)
        );
    }
}
