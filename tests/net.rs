//! virtio-net over a TAP, in a private network namespace the test makes (root is needed: under
//! `CI=true` the test fails without it, elsewhere it says it is skipped). The guest kernel
//! configures eth0 by itself (`ip=`) and answers ARP and ICMP with no user space: a ping from
//! the namespace proves both directions, with small frames and large ones the guest must
//! reassemble from fragments. Nothing leaves the machine.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ember_bin, guest_initramfs, guest_kernel, require_kvm};

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

/// A network namespace that is deleted when dropped.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A private namespace with `tap0` at 172.30.77.1/24, up. Installs `ip` and `ping` first on a
/// machine that lacks them (as the artefact builders install theirs).
fn netns_with_tap(tag: &str) -> Netns {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/lib.sh");
    sh(&[
        "bash",
        "-c",
        &format!("source {lib} && ensure_packages iproute2 iputils-ping"),
    ]);
    let ns = Netns(format!("ember-{tag}-{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    sh(&[
        "ip", "-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap",
    ]);
    sh(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "172.30.77.1/24",
        "dev",
        "tap0",
    ]);
    sh(&["ip", "-n", &ns.0, "link", "set", "tap0", "up"]);
    ns
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

#[test]
fn the_guest_answers_ping_through_virtio_net_with_small_and_fragmented_packets() {
    if !require_kvm() || !require_root() {
        return;
    }
    let ns = netns_with_tap("ping");
    let (vmlinux, _) = guest_kernel();
    let cmdline = format!(
        "{} ip=172.30.77.2::172.30.77.1:255.255.255.0::eth0:off",
        vmm::DEFAULT_CMDLINE
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, ember_bin()])
        .args([
            "--kernel",
            vmlinux.to_str().expect("utf-8"),
            "--initrd",
            guest_initramfs().to_str().expect("utf-8"),
            "--net",
            "tap=tap0,mac=06:00:ac:1e:4d:02",
            "--cmdline",
            &cmdline,
            "--",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let console = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().expect("stdout");
    let reader = {
        let console = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console
                    .lock()
                    .expect("console")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if console
            .lock()
            .expect("console")
            .contains("ember-init: ready")
        {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().expect("wait").is_none(),
            "the guest did not come up:\n{}",
            console.lock().expect("console")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = console.lock().expect("console").clone();
    assert!(
        text.contains("IP-Config: Complete") || text.contains("172.30.77.2"),
        "eth0 was not configured:\n{text}"
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
    let _ = child.kill();
    let _ = common::wait_within(&mut child, Duration::from_secs(60));
    let _ = reader.join();
}
