//! `cargo bench --bench block`: virtio-blk throughput measured by the blk test guest's own
//! driver (sequential write and read in 1 MiB requests, 4 KiB random reads) on a 512 MiB
//! image, Ember against QEMU microvm (`virtio-blk-device`) on the same image, interleaved.
//! `EMBER_BENCH_ROUNDS` (default 3), `EMBER_BENCH_DISK_MIB` (default 512).

#[path = "harness/mod.rs"]
mod harness;

use std::time::Duration;

use serde_json::json;

fn figures(out: &str) -> Option<(f64, f64, f64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("bench: seq_write_mib_s="))?;
    let get = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some((
        get("seq_write_mib_s=")?,
        get("seq_read_mib_s=")?,
        get("rand_read_iops=")?,
    ))
}

fn main() {
    if !harness::bench_requested("block") {
        return;
    }
    let rounds: usize = harness::env_or("EMBER_BENCH_ROUNDS", 3);
    let mib: u64 = harness::env_or("EMBER_BENCH_DISK_MIB", 512);
    let guest = harness::build_guest("blk", "pvh.ld");
    let img = harness::out_dir().join("block-bench.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(mib << 20))
        .expect("image");
    let action = format!("action=bench mib={mib}");
    let qemu = harness::qemu_version();
    let (mut ember, mut q) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("bench: block round {}/{rounds} (Ember)", r + 1);
        let args: Vec<String> = [
            "--kernel",
            &guest.display().to_string(),
            "--memory",
            "128M",
            "--cmdline",
            &action,
            "--disk",
            &img.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = harness::timed_run(
            harness::ember_bin(),
            &args,
            None,
            128,
            Duration::from_secs(600),
        );
        ember.push(
            figures(&s.stdout)
                .unwrap_or_else(|| panic!("no figures from Ember:\n{}{}", s.stdout, s.stderr)),
        );
        if qemu.is_some() {
            eprintln!("bench: block round {}/{rounds} (QEMU)", r + 1);
            let mut a = harness::qemu_args(&guest, None, &action, 128);
            let cpu = a
                .iter()
                .position(|x| x == "-cpu")
                .map(|i| i + 1)
                .expect("-cpu");
            a[cpu].push_str(",+invtsc");
            a.extend([
                "-drive".into(),
                format!("id=d0,file={},format=raw,if=none", img.display()),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
            ]);
            let s = harness::timed_run(
                "qemu-system-x86_64",
                &a,
                None,
                128,
                Duration::from_secs(600),
            );
            match figures(&s.stdout) {
                Some(f) => q.push(f),
                None => eprintln!("bench: QEMU gave no figures:\n{}{}", s.stdout, s.stderr),
            }
        }
    }
    let col = |v: &[(f64, f64, f64)], i: usize| -> Vec<f64> {
        v.iter().map(|t| [t.0, t.1, t.2][i]).collect()
    };
    let mut rows = vec![harness::header()];
    let mut results = serde_json::Map::new();
    for (i, (name, unit)) in [
        ("sequential write", "MiB/s"),
        ("sequential read", "MiB/s"),
        ("4 KiB random read", "IOPS"),
    ]
    .iter()
    .enumerate()
    {
        let (e, qq) = (col(&ember, i), col(&q, i));
        rows.push(harness::row(
            name,
            harness::median(&e),
            harness::median(&qq),
            unit,
        ));
        results.insert(
            name.to_string(),
            json!({"unit": unit, "ember": e, "qemu": qq,
            "ratio_median": harness::median(&e).zip(harness::median(&qq)).map(|(a, b)| a / b)}),
        );
    }
    let v = json!({"benchmark": "block", "disk_mib": mib, "rounds": rounds, "qemu": qemu, "results": results});
    let p = harness::write_json("block", &v);
    let _ = std::fs::remove_file(&img);
    println!("{}\n\nJSON: {}", rows.join("\n"), p.display());
}
