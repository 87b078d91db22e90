//! seccomp: every thread of a running `ember` is filtered, a forbidden system call kills the
//! process and is named, a normal run with disk I/O passes, and `--seccomp off` warns.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    blk_guest, ember_bin, require_kvm, run_ember, run_ember_env, sparse_file, tiny_guest,
};

/// `(thread name, seccomp mode)` of every thread of `pid`.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.ok()?.path().join("status")).ok()?;
            let field = |k: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(k))
                    .map(|l| l[k.len()..].trim().to_string())
            };
            Some((field("Name:")?, field("Seccomp:")?))
        })
        .collect()
}

fn running(args: &[&str]) -> (std::process::Child, Vec<(String, String)>) {
    let mut child = Command::new(ember_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 14];
    out.read_exact(&mut buf).expect("guest output");
    std::thread::sleep(Duration::from_millis(50));
    let modes = thread_modes(child.id());
    (child, modes)
}

#[test]
fn every_thread_of_a_running_ember_is_filtered() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let img = sparse_file("seccomp-threads.img", 1 << 20);
    let (mut child, modes) = running(&[
        "--kernel",
        &kernel,
        "--cmdline",
        "action=loop",
        "--cpus",
        "2",
        "--disk",
        img.to_str().expect("utf-8"),
    ]);
    child.kill().expect("kill");
    let _ = child.wait();
    let names: Vec<&str> = modes.iter().map(|m| m.0.as_str()).collect();
    for want in [
        "ember",
        "ember-vcpu0",
        "ember-vcpu1",
        "ember-vmm",
        "ember-signals",
    ] {
        assert!(names.contains(&want), "thread {want} missing: {modes:?}");
    }
    assert!(
        modes.iter().all(|(_, m)| m == "2"),
        "a thread without a filter: {modes:?}"
    );
}

#[test]
fn seccomp_off_warns_and_filters_nothing() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let (mut child, modes) = running(&[
        "--kernel",
        &kernel,
        "--cmdline",
        "action=loop",
        "--seccomp",
        "off",
    ]);
    child.kill().expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seccomp filters are off"), "{stderr}");
}

#[test]
fn a_forbidden_call_from_a_vcpu_thread_kills_the_process() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_str().expect("utf-8").to_string();
    let r = run_ember_env(
        &["--kernel", &kernel, "--cmdline", "action=loop"],
        b"",
        Duration::from_secs(20),
        &[("EMBER_SECCOMP_SELFTEST", "vcpu")],
    );
    assert_eq!(r.code(), 128 + libc::SIGSYS, "{r:?}");
    let line = format!("forbidden system call {}", libc::SYS_getppid);
    assert!(r.stderr.contains(&line), "{}", r.stderr);
}

#[test]
fn disk_io_and_flush_pass_under_the_filters() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("seccomp-io.img", 4 << 20);
    let kernel = blk_guest().to_str().expect("utf-8").to_string();
    let r = run_ember(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--cmdline",
            "action=write seed=5 kib=512",
            "--disk",
            img.to_str().expect("utf-8"),
            "--seccomp",
            "on",
        ],
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.contains("write: ok"), "{}", r.stdout);
    let data = std::fs::read(&img).expect("image");
    assert!(data[..512 << 10] == common::blk_pattern(5, 512 << 10)[..]);
    let _ = std::fs::remove_file(img);
}
