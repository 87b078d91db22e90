//! Bad input to the `ember` CLI: every case ends in a non-zero exit and exactly one line on
//! stderr naming the problem, never a panic.

mod common;

use std::time::Duration;

use common::{require_kvm, run_ember, tiny_guest};

const T: Duration = Duration::from_secs(20);

fn assert_one_line_error(args: &[&str], needle: &str) {
    let r = run_ember(args, b"", T);
    assert!(!r.timed_out, "{args:?} hung: {r:?}");
    assert_ne!(r.code(), 0, "{args:?} must fail: {r:?}");
    assert!(r.code() > 0, "{args:?} died from a signal: {r:?}");
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.contains("kvm-pvm host"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one line, got {:?}",
        r.stderr
    );
    assert!(lines[0].starts_with("ember: "), "{:?}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {:?} does not mention {needle:?}",
        lines[0]
    );
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

fn temp_file(name: &str, content: &[u8]) -> String {
    let p = std::env::temp_dir().join(format!("ember-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, content).expect("temp file");
    p.to_str().expect("utf-8").to_string()
}

#[test]
fn missing_kernel() {
    assert_one_line_error(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn kernel_that_is_no_kernel() {
    if !require_kvm() {
        return;
    }
    let junk = temp_file("junk", &[0x42; 65536]);
    assert_one_line_error(&["--kernel", &junk], "not a loadable kernel");
    let dir = std::env::temp_dir();
    assert_one_line_error(
        &["--kernel", dir.to_str().expect("utf-8")],
        "not a regular file",
    );
}

#[test]
fn truncated_elf() {
    if !require_kvm() {
        return;
    }
    let full = std::fs::read(tiny_guest()).expect("tiny guest");
    for len in [16, 64, 200] {
        let t = temp_file(&format!("trunc{len}"), &full[..len]);
        assert_one_line_error(&["--kernel", &t], "not a loadable kernel");
    }
}

#[test]
fn bad_memory_sizes() {
    if !require_kvm() {
        return;
    }
    let k = tiny_guest().to_str().expect("utf-8").to_string();
    assert_one_line_error(&["--kernel", &k, "--memory", "0"], "too small");
    assert_one_line_error(&["--kernel", &k, "--memory", "100T"], "more than this host");
    assert_one_line_error(&["--kernel", &k, "--memory", "12Q"], "invalid memory size");
}

#[test]
fn bad_cpu_counts() {
    let k = tiny_guest().to_str().expect("utf-8").to_string();
    assert_one_line_error(&["--kernel", &k, "--cpus", "0"], "0 vCPUs");
    assert_one_line_error(&["--kernel", &k, "--cpus", "255"], "255 vCPUs");
    assert_one_line_error(&["--kernel", &k, "--cpus", "many"], "--cpus");
}

#[test]
fn command_line_too_long() {
    if !require_kvm() {
        return;
    }
    let k = tiny_guest().to_str().expect("utf-8").to_string();
    let long = "a".repeat(4000);
    assert_one_line_error(
        &["--kernel", &k, "--cmdline", &long, "--pvm", "off"],
        "accepts at most 2047",
    );
    // The PVM options count too: a line that fits alone can overflow with them.
    let near = "b".repeat(2000);
    assert_one_line_error(
        &["--kernel", &k, "--cmdline", &near, "--pvm", "on"],
        "accepts at most",
    );
}

#[test]
fn missing_initrd() {
    let k = tiny_guest().to_str().expect("utf-8").to_string();
    assert_one_line_error(
        &["--kernel", &k, "--initrd", "/nonexistent/initrd.gz"],
        "/nonexistent/initrd.gz",
    );
}

#[test]
fn missing_required_argument_and_unknown_flag() {
    assert_one_line_error(&[], "--kernel");
    assert_one_line_error(&["--kernel", "x", "--bogus"], "--bogus");
}

#[test]
fn version_and_help() {
    let v = run_ember(&["--version"], b"", T);
    assert_eq!(v.code(), 0);
    assert!(v.stdout.starts_with("ember "), "{v:?}");
    let h = run_ember(&["--help"], b"", T);
    assert_eq!(h.code(), 0);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--cpus",
        "--pvm",
    ] {
        assert!(h.stdout.contains(flag), "help lacks {flag}");
    }
}
