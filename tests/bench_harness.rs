//! The boot benchmark's harness in short mode (one boot per VMM; QEMU when installed): it
//! runs end to end and writes its JSON with every field present. Timings are not checked
//! here: they belong to `cargo bench --bench boot`.
#[path = "../benches/harness/boot.rs"]
mod boot;
#[path = "../benches/harness/mod.rs"]
mod harness;

mod common;

use std::time::Duration;

#[test]
fn boot_benchmark_short_mode_writes_complete_json() {
    if !common::require_kvm() {
        return;
    }
    let v = boot::run(&boot::Options {
        boots: 1,
        overhead_runs: 1,
        qemu: true,
        compare_backing: true,
        timeout: Duration::from_secs(600),
    });
    let path = harness::write_json("boot-short", &v);
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("json")).expect("parses");
    let required: &[&[&str]] = &[
        &["benchmark"],
        &["host", "pvm"],
        &["host", "qemu"],
        &["host", "qemu_skipped"],
        &["guest", "kernel"],
        &["guest", "initrd"],
        &["guest", "cmdline"],
        &["guest", "memory_mib"],
        &["guest", "marker"],
        &["boots"],
        &["linux", "ember", "to_marker_ms", "median"],
        &["linux", "ember", "to_boot_timer_ms"],
        &["linux", "ember", "to_exit_ms", "median"],
        &["linux", "ember", "phases_median_ms"],
        &["linux", "ember", "samples"],
        &["linux", "qemu", "to_marker_ms"],
        &["linux", "qemu", "to_exit_ms"],
        &["linux", "qemu", "samples"],
        &["linux", "ratio", "to_marker_median"],
        &["linux", "ratio", "to_exit_median"],
        &["vmm_overhead", "ember", "to_exit_ms", "median"],
        &["vmm_overhead", "ember", "startup_to_first_run_ms", "median"],
        &["vmm_overhead", "qemu", "to_exit_ms"],
        &["vmm_overhead", "ratio", "to_exit_median"],
        &["backing", "default"],
        &["backing", "other"],
        &["backing", "default_to_marker_ms", "median"],
        &["backing", "other_to_marker_ms", "median"],
        &["backing", "other_samples"],
        &["backing", "ratio", "other_over_default_to_marker_median"],
        &["memory", "ember_overhead_kib", "median"],
        &["memory", "qemu_overhead_kib"],
        &["memory", "ratio"],
    ];
    for path in required {
        let mut cur = &back;
        for key in *path {
            cur = cur
                .get(key)
                .unwrap_or_else(|| panic!("field {} missing in {back:#}", path.join(".")));
        }
    }
    let sample = &back["linux"]["ember"]["samples"][0];
    for key in [
        "to_marker_ms",
        "to_exit_ms",
        "exit_code",
        "peak_rss_kib",
        "guest_rss_kib",
        "overhead_kib",
        "phases_ms",
    ] {
        assert!(
            sample.get(key).is_some_and(|v| !v.is_null()),
            "Ember sample field {key}: {sample:#}"
        );
    }
    let phases = back["linux"]["ember"]["phases_median_ms"]
        .as_array()
        .expect("phases");
    assert!(
        phases.iter().any(|p| p["phase"] == "console marker"),
        "{phases:?}"
    );
    if back["host"]["qemu"].is_string() {
        assert!(
            back["linux"]["qemu"]["to_marker_ms"]["median"].is_f64(),
            "{back:#}"
        );
        assert!(back["linux"]["ratio"]["to_marker_median"].is_f64());
    } else {
        eprintln!(
            "QEMU not installed: its figures are null ({})",
            back["host"]["qemu_skipped"]
        );
    }
    println!("{}", boot::table(&back));
}
