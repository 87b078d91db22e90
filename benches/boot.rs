//! `cargo bench --bench boot`: Ember against QEMU microvm on the same kernel, initramfs and
//! guest options, interleaved. Environment: `EMBER_BENCH_N` (Linux boots per VMM, default
//! 10), `EMBER_BENCH_TINY_N` (tiny-guest runs, default 20), `EMBER_BENCH_NO_QEMU=1`,
//! `EMBER_BENCH_NO_BACKING=1` (skip the Linux boots with the other guest-memory backing).
//! Results: a table on stdout, JSON and an SVG plot under target/ember-bench/.

#[path = "harness/boot.rs"]
mod boot;
#[path = "harness/mod.rs"]
mod harness;

use std::time::Duration;

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("boot: benchmark");
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs benchmarks without `--bench`: building them is the test.
        return;
    }
    let opts = boot::Options {
        boots: env_n("EMBER_BENCH_N", 10),
        overhead_runs: env_n("EMBER_BENCH_TINY_N", 20),
        qemu: std::env::var("EMBER_BENCH_NO_QEMU").is_err(),
        compare_backing: std::env::var("EMBER_BENCH_NO_BACKING").is_err(),
        timeout: Duration::from_secs(900),
    };
    let v = boot::run(&opts);
    let json = harness::write_json("boot", &v);
    let series = |who: &str| -> Vec<f64> {
        v["linux"][who]["samples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["to_marker_ms"].as_f64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (e, q) = (series("ember"), series("qemu"));
    let phases: Vec<(String, f64)> = v["linux"]["ember"]["phases_median_ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["phase"].as_str().unwrap_or("").to_string(),
                        p["at_ms"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let svg = harness::plot(
        "boot",
        "Linux: spawn to console marker",
        &[("Ember", &e), ("QEMU microvm", &q)],
        &phases,
    );
    println!("{}", boot::table(&v));
    println!("\nJSON: {}\nplot: {}", json.display(), svg.display());
}
