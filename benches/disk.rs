//! `cargo bench --bench disk`: block figures measured inside a Linux guest, Ember's
//! virtio-blk against QEMU microvm's `virtio-blk-device` on the same raw image, kernel,
//! initramfs and command line, interleaved (the order alternates each round).
//!
//! The guest program is benches/guest/blkbench.c, compiled here with `musl-gcc -static -Os`
//! and given to the guest as a second newc cpio archive appended to the project's initramfs
//! (the kernel unpacks concatenated archives); the combined file is written to
//! target/ember-bench/, never into the artefact cache. The init runs
//! `/blkbench /dev/vda SEQ_MIB RAND_OPS RAND_SECONDS`: with O_DIRECT, a sequential write of
//! SEQ_MIB MiB in 1 MiB requests (then fdatasync), a sequential read of it, then RAND_OPS
//! 4 KiB reads at random offsets in it (fixed seed; stopped after RAND_SECONDS), and prints
//! its figures on the console. The image (target/ember-bench/disk-bench.img) is written in
//! full on the host first, so no run pays for the host file system allocating blocks; both
//! VMMs use the host page cache (Ember's default, QEMU's `cache=writeback`).
//!
//! Environment: `EMBER_BENCH_ROUNDS` (runs per VMM, default 3), `EMBER_BENCH_DISK_MIB`
//! (image, default 64), `EMBER_BENCH_SEQ_MIB` (default 16), `EMBER_BENCH_RAND_OPS`
//! (default 1000), `EMBER_BENCH_RAND_SECONDS` (default 10), `EMBER_BENCH_NO_QEMU=1`.
//! The defaults keep a run short on a kvm-pvm host, where the guest kernel is emulated and
//! a guest does about 7 MiB/s and 120 IOPS on either VMM (a Linux boot is ~15 s there): one
//! guest run takes about 30 s, the default 3 rounds about 3 minutes.
//! Results: a table on stdout, target/ember-bench/disk.json and disk.svg.

#[path = "harness/mod.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const GUEST_MIB: u64 = 256;
/// Where the program lands in the guest's root.
const GUEST_PROGRAM: &str = "blkbench";

/// `blkbench.c` built static into target/ember-bench.
fn build_blkbench() -> PathBuf {
    let src = harness::repo_root().join("benches/guest/blkbench.c");
    let out = harness::out_dir().join("blkbench");
    let status = Command::new("musl-gcc")
        .args(["-static", "-Os", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("musl-gcc (apt-get install musl-tools)");
    assert!(status.success(), "building {} failed", src.display());
    out
}

/// One newc cpio entry (`070701` header, name and data each padded to 4 bytes).
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The project's initramfs followed by a newc archive holding `program` as /`GUEST_PROGRAM`.
fn combined_initrd(initrd: &Path, program: &Path) -> PathBuf {
    let mut bytes = std::fs::read(initrd).expect("read initramfs");
    // The kernel looks for the next archive at a 4-byte boundary and skips zero padding.
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    let exe = std::fs::read(program).expect("read blkbench");
    cpio_entry(&mut bytes, 1, GUEST_PROGRAM, 0o100_755, &exe);
    cpio_entry(&mut bytes, 0, "TRAILER!!!", 0, &[]);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    let out = harness::out_dir().join("disk-initrd.cpio");
    std::fs::write(&out, bytes).expect("write combined initramfs");
    out
}

/// A raw image of `mib` MiB, every byte written (a non-zero pattern).
fn create_image(mib: u64) -> PathBuf {
    let img = harness::out_dir().join("disk-bench.img");
    let mut f = std::fs::File::create(&img).expect("create image");
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk).expect("write image");
    }
    f.sync_all().expect("sync image");
    img
}

/// The guest's figures: `(seq write MiB/s, seq read MiB/s, 4 KiB random-read IOPS)`.
fn figures(out: &str) -> Option<[f64; 3]> {
    let line = out.lines().find(|l| l.contains("blkbench: seq_write"))?;
    let get = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
    };
    Some([
        get("seq_write_mib_s=")?,
        get("seq_read_mib_s=")?,
        get("rand_read_iops=")?,
    ])
}

fn run_one(who: &str, program: &str, args: &[String]) -> Option<[f64; 3]> {
    let s = harness::timed_run(program, args, None, GUEST_MIB, Duration::from_secs(900));
    let f = figures(&s.stdout);
    match f {
        Some(f) => eprintln!(
            "bench: {who}: write {:.1} MiB/s, read {:.1} MiB/s, {:.0} IOPS ({:.1} s)",
            f[0],
            f[1],
            f[2],
            s.to_exit_ms / 1e3
        ),
        None => eprintln!(
            "bench: {who} gave no figures (exit {:?}):\n{}\n{}",
            s.code, s.stdout, s.stderr
        ),
    }
    f
}

fn main() {
    if !harness::bench_requested("disk") {
        return;
    }
    let rounds: u64 = harness::env_or("EMBER_BENCH_ROUNDS", 3);
    let image_mib: u64 = harness::env_or("EMBER_BENCH_DISK_MIB", 64);
    let seq_mib = harness::env_or::<u64>("EMBER_BENCH_SEQ_MIB", 16).min(image_mib);
    let rand_ops: u64 = harness::env_or("EMBER_BENCH_RAND_OPS", 1000);
    let rand_seconds: u64 = harness::env_or("EMBER_BENCH_RAND_SECONDS", 10);

    let (vmlinux, _) = harness::kernel();
    let initrd = combined_initrd(&harness::initramfs(), &build_blkbench());
    let img = create_image(image_mib);
    let command: Vec<String> = [
        format!("/{GUEST_PROGRAM}"),
        "/dev/vda".into(),
        seq_mib.to_string(),
        rand_ops.to_string(),
        rand_seconds.to_string(),
    ]
    .into();
    let cmdline = harness::guest_cmdline();

    let mut ember_args: Vec<String> = [
        "--kernel",
        &vmlinux.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--memory",
        &format!("{GUEST_MIB}M"),
        "--disk",
        &img.display().to_string(),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ember_args.extend(command.iter().cloned());
    let encoded = vmm::command::encode(&command).expect("encodable command");
    let mut qemu_args = harness::qemu_args(
        &vmlinux,
        Some(&initrd),
        &format!("{cmdline} {encoded}"),
        GUEST_MIB,
    );
    qemu_args.extend([
        "-drive".into(),
        format!("id=d0,file={},format=raw,if=none", img.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0".into(),
    ]);
    let qemu = if std::env::var("EMBER_BENCH_NO_QEMU").is_ok() {
        None
    } else {
        harness::qemu_version()
    };
    if qemu.is_none() {
        eprintln!("bench: QEMU skipped (not installed or EMBER_BENCH_NO_QEMU)");
    }

    let (mut ember, mut q) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate who goes first, so neither always finds the host's caches as the other
        // left them.
        let ember_first = r % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == ember_first {
                eprintln!("bench: disk round {}/{rounds} (Ember)", r + 1);
                ember.extend(run_one("Ember", harness::ember_bin(), &ember_args));
            } else if qemu.is_some() {
                eprintln!("bench: disk round {}/{rounds} (QEMU)", r + 1);
                q.extend(run_one("QEMU", "qemu-system-x86_64", &qemu_args));
            }
        }
    }

    let names = [
        ("sequential write, O_DIRECT", "MiB/s", "seq_write"),
        ("sequential read, O_DIRECT", "MiB/s", "seq_read"),
        ("4 KiB random read, O_DIRECT", "IOPS", "rand_read_4k"),
    ];
    let col = |v: &[[f64; 3]], i: usize| -> Vec<f64> { v.iter().map(|t| t[i]).collect() };
    let mut rows = vec![harness::header()];
    let mut results = serde_json::Map::new();
    for (i, (name, unit, key)) in names.iter().enumerate() {
        let (e, qq) = (col(&ember, i), col(&q, i));
        rows.push(harness::row(
            name,
            harness::median(&e),
            harness::median(&qq),
            unit,
        ));
        let ratio = harness::median(&e)
            .zip(harness::median(&qq))
            .map(|(a, b)| a / b);
        results.insert(
            key.to_string(),
            json!({"figure": name, "unit": unit, "ember": e, "qemu": qq, "ratio_median": ratio}),
        );
    }
    let v: Value = json!({
        "benchmark": "disk",
        "host": {"pvm": harness::host_is_pvm(), "qemu": qemu},
        "guest": {
            "kernel": vmlinux.display().to_string(),
            "initrd": initrd.display().to_string(),
            "cmdline": cmdline,
            "memory_mib": GUEST_MIB,
            "command": command,
            "qemu_cpu": harness::qemu_cpu(),
        },
        "image_mib": image_mib,
        "seq_mib": seq_mib,
        "rand_ops": rand_ops,
        "rand_seconds": rand_seconds,
        "rounds": rounds,
        "results": results,
    });
    let p = harness::write_json("disk", &v);
    let (ew, er, ei) = (col(&ember, 0), col(&ember, 1), col(&ember, 2));
    let (qw, qr, qi) = (col(&q, 0), col(&q, 1), col(&q, 2));
    let svg = harness::plot_panels(
        "disk",
        &[
            (
                "seq write (O_DIRECT)",
                "MiB/s",
                &[("Ember", &ew), ("QEMU", &qw)],
            ),
            (
                "seq read (O_DIRECT)",
                "MiB/s",
                &[("Ember", &er), ("QEMU", &qr)],
            ),
            (
                "4 KiB random read",
                "IOPS",
                &[("Ember", &ei), ("QEMU", &qi)],
            ),
        ],
    );
    let _ = std::fs::remove_file(&img);
    println!(
        "In-guest disk figures: {seq_mib} MiB sequential in 1 MiB requests, {rand_ops} random \
         4 KiB reads (at most {rand_seconds} s), on a {image_mib} MiB image; median of {rounds} \
         run(s)\n\n{}\n\nJSON: {}\nplot: {}",
        rows.join("\n"),
        p.display(),
        svg.display()
    );
}
