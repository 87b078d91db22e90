//! Load: 32 `ember` processes with tiny guests started at once on a 2-core machine all finish
//! correctly; 500 tiny-guest VMs in a row in one library process leave no file descriptor,
//! thread or memory behind. (Six concurrent Linux boots are in boot_linux.rs.) The tests of
//! this file take turns, so that one's children do not disturb the other's counts.

mod common;

use common::{ember_bin, require_kvm, tiny_guest};
use vmm::{ExitReason, PvmMode, Vm, VmConfig};

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn thirty_two_embers_at_once() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let children: Vec<_> = (0..32u8)
        .map(|i| {
            let cmdline = format!("action=print say=ember-{i} status={i}");
            let child = std::process::Command::new(ember_bin())
                .args([
                    "--kernel",
                    &kernel,
                    "--cmdline",
                    &cmdline,
                    "--memory",
                    "32M",
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn");
            (i, child)
        })
        .collect();
    for (i, child) in children {
        let out = common::output_within(child, std::time::Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(i32::from(i)), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("ember-{i}\n"));
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).expect("proc").count()
}

#[test]
fn five_hundred_vms_in_a_row_leak_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if !require_kvm() {
        return;
    }
    let cfg = VmConfig::builder(tiny_guest())
        .cmdline("action=exit:7")
        .memory_mib(16)
        .pvm(PvmMode::Off)
        .build()
        .expect("config");
    let run = || {
        let mut vm = Vm::start(cfg.clone()).expect("start");
        let exit = common::vm_wait(&mut vm, common::WAIT_LIMIT);
        assert_eq!(exit.reason, ExitReason::Status(7));
    };
    for _ in 0..20 {
        run(); // warm-up: allocator pools, lazily initialised statics
    }
    // A joined thread can still be listed for a moment: pthread_join returns when the kernel
    // clears the thread's id, a little before it removes the task. So the counts are taken
    // once the threads of the last VM are gone, and a leak is what stays.
    let threads_settle_to = |limit: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let n = count("/proc/self/task");
            if n <= limit || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let threads = count("/proc/self/task");
    let (fds, rss) = (count("/proc/self/fd"), rss_kib());
    for _ in 0..500 {
        run();
    }
    assert!(count("/proc/self/fd") <= fds, "file descriptors leaked");
    let now = threads_settle_to(threads);
    assert!(
        now <= threads,
        "threads leaked: {now} after, {threads} before"
    );
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB over 500 VMs");
}
