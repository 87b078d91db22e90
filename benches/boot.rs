//! `cargo bench --bench boot`: Ember against QEMU microvm on the same kernel, initramfs and
//! guest options, interleaved. Environment: `EMBER_BENCH_N` (Linux boots per VMM, default
//! 10), `EMBER_BENCH_TINY_N` (tiny-guest runs, default 20), `EMBER_BENCH_NO_QEMU=1`,
//! `EMBER_BENCH_NO_BACKING=1` (skip the Linux boots with the other guest-memory backing),
//! `EMBER_BENCH_NO_FIRST_OUTPUT=1` (skip the boots timing "Run /init" to a command's output).
//! Results: a table on stdout, JSON and an SVG plot under target/ember-bench/.

#[path = "harness/boot.rs"]
mod boot;
#[path = "harness/mod.rs"]
mod harness;

use std::time::Duration;

fn main() {
    if !harness::bench_requested("boot") {
        return;
    }
    let opts = boot::Options {
        boots: harness::env_or("EMBER_BENCH_N", 10),
        overhead_runs: harness::env_or("EMBER_BENCH_TINY_N", 20),
        qemu: std::env::var("EMBER_BENCH_NO_QEMU").is_err(),
        compare_backing: std::env::var("EMBER_BENCH_NO_BACKING").is_err(),
        timeout: Duration::from_secs(900),
    };
    let v = boot::run(&opts);
    let json = harness::write_json("boot", &v);
    let series = |who: &str, key: &str| -> Vec<f64> {
        let samples = |v: &serde_json::Value| -> Vec<f64> {
            v["samples"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s[key].as_f64()).collect())
                .unwrap_or_default()
        };
        let mut out = samples(&v["linux"][who]);
        if key == "to_init_ready_ms" {
            out.extend(samples(&v["first_output"][who]));
        }
        out
    };
    let (e, q) = (
        series("ember", "to_marker_ms"),
        series("qemu", "to_marker_ms"),
    );
    let (er, qr) = (
        series("ember", "to_init_ready_ms"),
        series("qemu", "to_init_ready_ms"),
    );
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
        "Linux: spawn to Run /init, to init ready",
        &[
            ("Ember /init", &e),
            ("QEMU /init", &q),
            ("Ember ready", &er),
            ("QEMU ready", &qr),
        ],
        &phases,
    );
    println!("{}", boot::table(&v));
    println!("\nJSON: {}\nplot: {}", json.display(), svg.display());
}
