//! `cargo bench --bench vsock`: Ember's virtio-vsock seen from the host through Firecracker's
//! protocol (connect to the Unix socket of `--vsock cid=3,socket=PATH`, write `CONNECT 5000`,
//! read `OK <port>`, then the stream), against the project's Linux guest running
//! `xfer echo vsock 5000` (resources/initramfs/xfer.c: it listens, and echoes each connection
//! in a child process of its own until the host half-closes).
//!
//! Per boot, once the console says `xfer: listening on vsock port 5000`:
//! - connection setup: `EMBER_BENCH_CONNECTS` connections one after the other, each timed from
//!   writing `CONNECT` to reading the `OK` line (the guest kernel answers from its listening
//!   socket; the echo child is forked after). Each then echoes one byte, untimed, so its child
//!   runs, and is closed 50 ms before the next, so every setup finds the guest idle;
//! - round trip: `EMBER_BENCH_ECHOES` one-byte echoes on one connection, after three warm-up
//!   echoes: min, median and p99 (the sample at rank `round((n - 1) * 0.99)`);
//! - throughput: echoes of 1 MiB and 4 MiB (random bytes, checked exact), each on a new
//!   connection, a writer thread sending and half-closing while this thread reads: MiB/s of
//!   both directions (2 x size) from the first byte written to the end of the echo.
//!
//! - exits per MiB: the VM's exits as KVM counts them (`VmHandle::exit_counts`, from KVM's
//!   statistics), read before and after each bulk echo, over the MiB moved both ways.
//!
//! The VM runs in this process through the `vmm` library (as a sandbox service embeds it), with
//! the console captured; the host side still goes through the socket. No peer: QEMU's vsock
//! needs vhost-vsock in the host kernel, which the project's hosts lack, so the figures are
//! absolute.
//!
//! No root needed. Environment: `EMBER_BENCH_N` (boots, default 3), `EMBER_BENCH_ECHOES`
//! (default 50), `EMBER_BENCH_CONNECTS` (default 20). On a kvm-pvm host (guest kernel
//! emulated) one boot with its measurements took 150 s on a loaded 2-core machine, 96 s of it
//! the boot (about 12 s on an idle one) and 35 s the two bulk echoes.
//! Results: a table on stdout, target/ember-bench/vsock.json and vsock.svg.

#[path = "harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitCounts, Vm, VmConfig, VmHandle};

use serde_json::{json, Value};

const GUEST_MIB: u64 = 256;
/// The guest port `xfer` listens on.
const PORT: u32 = 5000;
/// What `xfer` prints once it listens.
const LISTENING: &str = "xfer: listening on vsock port 5000";
/// Start to the listening line.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A host-side read or write gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Echo sizes for throughput.
const SIZES: [usize; 2] = [1 << 20, 4 << 20];
/// Console bytes kept.
const CONSOLE_LIMIT: usize = 1 << 20;

const MIB: f64 = (1u64 << 20) as f64;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// A VMM with its console read as it comes.

// ---------------------------------------------------------------------------------------------
// The host side of the protocol.

/// Connects through `sock` to the guest's `PORT`: the stream after `OK`, and the time from
/// connecting to reading the whole `OK` line.
fn connect(sock: &Path) -> Result<(UnixStream, Duration), String> {
    let t = Instant::now();
    let (s, _) = testkit::vsock_connect(sock, PORT, IO_TIMEOUT)?;
    Ok((s, t.elapsed()))
}

/// Sends one byte and waits for it to come back: the round trip.
fn echo_byte(s: &mut UnixStream, byte: u8) -> Result<Duration, String> {
    let t = Instant::now();
    s.write_all(&[byte])
        .map_err(|e| format!("write byte: {e}"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .map_err(|e| format!("read byte: {e}"))?;
    let took = t.elapsed();
    if b[0] != byte {
        return Err(format!("sent {byte:#x}, {:#x} came back", b[0]));
    }
    Ok(took)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Echoes `len` random bytes on a new connection: MiB/s of both directions, from the first
/// byte written to the end of the echo.
fn echo_bulk(sock: &Path, len: usize, seed: u64) -> Result<f64, String> {
    let data = random_bytes(len, seed);
    let (s, _) = connect(sock)?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let out = data.clone();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        w.write_all(&out).map_err(|e| format!("send: {e}"))?;
        w.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))
    });
    let mut back = Vec::with_capacity(len);
    let mut r = s;
    let read = r.read_to_end(&mut back);
    let took = t.elapsed();
    writer
        .join()
        .unwrap_or_else(|_| Err("writer panicked".into()))?;
    read.map_err(|e| format!("echo: {e}"))?;
    if back != data {
        return Err(format!(
            "the echo of {len} bytes differs ({} came back)",
            back.len()
        ));
    }
    Ok(2.0 * len as f64 / MIB / took.as_secs_f64().max(1e-9))
}

// ---------------------------------------------------------------------------------------------
// One boot.

struct Plan {
    vmlinux: String,
    initrd: String,
    echoes: usize,
    connects: usize,
}

#[derive(Default)]
struct Round {
    /// Start to the listening line.(s).
    boot_s: Option<f64>,
    setup_ms: Vec<f64>,
    rtt_ms: Vec<f64>,
    /// MiB/s for each of `SIZES`.
    mib_s: [Option<f64>; 2],
    /// vCPU exits per MiB moved (both directions counted) for each of `SIZES`.
    exits_per_mib: [Option<f64>; 2],
    errors: Vec<String>,
}

fn work_dir(round: usize) -> PathBuf {
    std::env::temp_dir().join(format!("ember-bench-vsock-{}-{round}", std::process::id()))
}

fn measure(vm: &VmHandle, sock: &Path, plan: &Plan, r: &mut Round) -> Result<(), String> {
    for _ in 0..plan.connects {
        let (mut s, took) = connect(sock)?;
        r.setup_ms.push(ms(took));
        echo_byte(&mut s, 0x5a)?;
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut s, _) = connect(sock)?;
    for i in 0..3u8 {
        echo_byte(&mut s, i)?;
    }
    for i in 0..plan.echoes {
        r.rtt_ms.push(ms(echo_byte(&mut s, i as u8)?));
    }
    drop(s);
    for (i, &len) in SIZES.iter().enumerate() {
        let before = vm.exit_counts();
        r.mib_s[i] = Some(echo_bulk(sock, len, 7 + i as u64)?);
        if let (Some(b), Some(a)) = (before, vm.exit_counts()) {
            let moved = 2.0 * len as f64 / MIB;
            r.exits_per_mib[i] = Some(ExitCounts::since(&a, &b).exits as f64 / moved);
        }
    }
    Ok(())
}

fn run_round(plan: &Plan, round: usize) -> Round {
    let mut r = Round::default();
    let dir = work_dir(round);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        r.errors.push(format!("{}: {e}", dir.display()));
        return r;
    }
    let sock = dir.join("v.sock");
    let t0 = Instant::now();
    let config = VmConfig::builder(&plan.vmlinux)
        .initrd(&plan.initrd)
        .memory_mib(GUEST_MIB)
        .vsock(3, &sock)
        .command(["xfer", "echo", "vsock", &PORT.to_string()])
        .console_marker(LISTENING)
        .build();
    let capture = Capture::new(CONSOLE_LIMIT);
    let console = Console {
        output: ConsoleOutput::Capture(capture.clone()),
        input: ConsoleInput::None,
    };
    let started = config
        .map_err(|e| e.to_string())
        .and_then(|c| Vm::start_with_console(c, console).map_err(|e| e.to_string()));
    let mut vm = match started {
        Ok(vm) => vm,
        Err(e) => {
            r.errors.push(e);
            return r;
        }
    };
    while !vm.console_marker_seen() && !vm.has_ended() && t0.elapsed() < BOOT_TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    if vm.console_marker_seen() {
        r.boot_s = Some(t0.elapsed().as_secs_f64());
        if let Err(e) = measure(&vm, &sock, plan, &mut r) {
            r.errors.push(e);
        }
    } else {
        r.errors.push("the guest never listened".into());
    }
    let exit = vm.kill();
    if !r.errors.is_empty() {
        let text = capture.text();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        eprintln!(
            "bench: vsock boot failed in part: {}\n--- console (end)\n{}\n--- exit: {:?}",
            r.errors.join("; "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            exit.reason
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// The sample at rank `round((n - 1) * p)` of `v` sorted.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[((s.len() - 1) as f64 * p).round() as usize])
}

fn row(name: &str, v: Option<f64>) -> String {
    format!(
        "| {name:<44} | {:>10} |",
        v.map_or("-".to_string(), |v| format!("{v:.3}"))
    )
}

fn summary(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "min": percentile(v, 0.0),
        "median": percentile(v, 0.5),
        "p99": percentile(v, 0.99),
        "max": percentile(v, 1.0),
    })
}

fn main() {
    if !harness::bench_requested("vsock") {
        return;
    }
    let boots: usize = harness::env_or("EMBER_BENCH_N", 3);
    let (vmlinux, _) = harness::kernel();
    let plan = Plan {
        vmlinux: vmlinux.display().to_string(),
        initrd: harness::initramfs().display().to_string(),
        echoes: harness::env_or("EMBER_BENCH_ECHOES", 50),
        connects: harness::env_or("EMBER_BENCH_CONNECTS", 20),
    };
    let started = Instant::now();
    let mut rounds = Vec::new();
    for b in 0..boots {
        eprintln!("bench: vsock boot {}/{boots}", b + 1);
        let t = Instant::now();
        let r = run_round(&plan, b);
        eprintln!(
            "bench: vsock: setup median {} ms, round trip median {} ms, 1 MiB {} MiB/s, \
             4 MiB {} MiB/s ({:.1} s)",
            fmt(percentile(&r.setup_ms, 0.5)),
            fmt(percentile(&r.rtt_ms, 0.5)),
            fmt(r.mib_s[0]),
            fmt(r.mib_s[1]),
            t.elapsed().as_secs_f64()
        );
        rounds.push(r);
    }

    let pool = |get: fn(&Round) -> &[f64]| -> Vec<f64> {
        rounds.iter().flat_map(|r| get(r).iter().copied()).collect()
    };
    let rtt = pool(|r| &r.rtt_ms);
    let setup = pool(|r| &r.setup_ms);
    let mib_s: Vec<Vec<f64>> = (0..SIZES.len())
        .map(|i| rounds.iter().filter_map(|r| r.mib_s[i]).collect())
        .collect();
    let boot: Vec<f64> = rounds.iter().filter_map(|r| r.boot_s).collect();

    let mut rows = vec![format!(
        "| {:<44} | {:>10} |\n|{}|{}|",
        "figure",
        "Ember",
        "-".repeat(46),
        "-".repeat(12)
    )];
    for (stat, p) in [("min", 0.0), ("median", 0.5), ("p99", 0.99)] {
        rows.push(row(
            &format!("1-byte echo round trip, {stat} (ms)"),
            percentile(&rtt, p),
        ));
    }
    for (stat, p) in [("min", 0.0), ("median", 0.5), ("p99", 0.99)] {
        rows.push(row(
            &format!("CONNECT to OK, {stat} (ms)"),
            percentile(&setup, p),
        ));
    }
    for (i, len) in SIZES.iter().enumerate() {
        rows.push(row(
            &format!("echo {} MiB, both ways counted (MiB/s)", len >> 20),
            harness::median(&mib_s[i]),
        ));
    }
    rows.push(row("start to xfer listening (s)", harness::median(&boot)));
    let exits: Vec<Vec<f64>> = (0..SIZES.len())
        .map(|i| rounds.iter().filter_map(|r| r.exits_per_mib[i]).collect())
        .collect();
    for (i, len) in SIZES.iter().enumerate() {
        rows.push(row(
            &format!("vCPU exits per MiB, echo {} MiB", len >> 20),
            harness::median(&exits[i]),
        ));
    }

    let errors: Vec<&String> = rounds.iter().flat_map(|r| &r.errors).collect();
    let v = json!({
        "benchmark": "vsock",
        "host": {"pvm": harness::host_is_pvm(), "peer": null,
                 "peer_skipped": "no vhost-vsock on the host, so no QEMU vsock"},
        "guest": {
            "kernel": plan.vmlinux,
            "initrd": plan.initrd,
            "memory_mib": GUEST_MIB,
            "command": format!("xfer echo vsock {PORT}"),
        },
        "boots": boots,
        "echoes_per_boot": plan.echoes,
        "connects_per_boot": plan.connects,
        "rtt_1_byte_ms": summary(&rtt),
        "connect_to_ok_ms": summary(&setup),
        "echo_mib_s": SIZES.iter().zip(&mib_s).map(|(len, v)| json!({"bytes": len, "samples": v, "median": harness::median(v)})).collect::<Vec<_>>(),
        "start_to_listening_s": boot,
        "exits_per_mib": SIZES.iter().zip(&exits).map(|(len, v)| json!({"bytes": len, "samples": v, "median": harness::median(v)})).collect::<Vec<_>>(),
        "samples": rounds.iter().map(|r| json!({"rtt_ms": r.rtt_ms, "connect_to_ok_ms": r.setup_ms, "echo_mib_s": r.mib_s, "exits_per_mib": r.exits_per_mib, "errors": r.errors})).collect::<Vec<_>>(),
        "errors": errors,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let json_path = harness::write_json("vsock", &v);
    let svg = harness::plot_panels(
        "vsock",
        &[
            ("1-byte echo round trip", "ms", &[("Ember", &rtt)]),
            ("CONNECT to OK", "ms", &[("Ember", &setup)]),
            (
                "echo throughput",
                "MiB/s",
                &[("1 MiB", &mib_s[0]), ("4 MiB", &mib_s[1])],
            ),
        ],
    );
    println!(
        "virtio-vsock from the host (Firecracker's protocol) to the guest's `xfer echo`: {boots} \
         boot(s), {} echoes and {} connections each, samples pooled, throughput the median; no \
         peer on this host (no vhost-vsock); exits per MiB from KVM's statistics, both \
         directions counted; {:.0} s\n\n{}\n\nJSON: {}\nplot: {}",
        plan.echoes,
        plan.connects,
        started.elapsed().as_secs_f64(),
        rows.join("\n"),
        json_path.display(),
        svg.display()
    );
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}"))
}
