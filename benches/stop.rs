//! `cargo bench --bench stop`: how long stopping, pausing and resuming a running VM take for
//! 1, 8 and 254 vCPUs, through the library. The tiny guest's boot vCPU spins
//! (`action=loop`); the others wait for a start-up IPI inside `KVM_RUN`. Once the console
//! shows `tiny: looping`, each round times `pause()` (call to return: every vCPU out of the
//! guest and parked, the event loop parked), then `resume()` (call to return: every thread
//! running again), then, after the vCPUs have had time to re-enter the guest, `kill()`: from
//! the call to its return (each vCPU kicked once, joined, the VM torn down and its thread
//! joined), and from the stop request to `VmExit::timestamps.exit` as the VM records them.
//! Environment: `EMBER_BENCH_ROUNDS` (VMs per vCPU count, default 10),
//! `EMBER_BENCH_VCPUS` (comma-separated counts, default `1,8,254`).
//! Results: a table on stdout, target/ember-bench/stop.json and stop.svg.

#[path = "harness/mod.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitReason, Vm, VmConfig};

/// How long a VM gets to start and print its first line.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Time after `resume()` for the vCPUs to be back in `KVM_RUN` before the kill is timed.
const SETTLE: Duration = Duration::from_millis(50);
/// Guest RAM (MiB).
const GUEST_MIB: u64 = 64;

/// One round's figures (ms).
struct Round {
    pause: f64,
    resume: f64,
    kill: f64,
    stop_to_exit: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round(tiny: &Path, vcpus: u8) -> Round {
    let cfg = VmConfig::builder(tiny)
        .cmdline("action=loop")
        .memory_mib(GUEST_MIB)
        .vcpus(vcpus)
        .build()
        .expect("config");
    let out = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(out.clone()),
        input: ConsoleInput::None,
    };
    let mut vm = Vm::start_with_console(cfg, console).expect("start");
    let deadline = Instant::now() + START_TIMEOUT;
    while !out.text().contains("tiny: looping") {
        assert!(
            Instant::now() < deadline && !vm.has_ended(),
            "{vcpus} vCPUs: the guest did not start looping: {:?}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = Instant::now();
    vm.pause().expect("pause");
    let pause = ms(t.elapsed());
    assert!(vm.is_paused());
    let t = Instant::now();
    vm.resume();
    let resume = ms(t.elapsed());
    std::thread::sleep(SETTLE);
    let t = Instant::now();
    let exit = vm.kill();
    let kill = ms(t.elapsed());
    assert_eq!(exit.reason, ExitReason::Stopped, "{vcpus} vCPUs");
    let ts = exit.timestamps;
    let requested = ts.stop_requested.expect("kill() records the stop request");
    Round {
        pause,
        resume,
        kill,
        stop_to_exit: ms(ts.exit.duration_since(requested)),
    }
}

fn main() {
    if !harness::bench_requested("stop") {
        return;
    }
    let rounds: usize = harness::env_or("EMBER_BENCH_ROUNDS", 10);
    let counts: Vec<u8> = std::env::var("EMBER_BENCH_VCPUS")
        .unwrap_or_else(|_| "1,8,254".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("EMBER_BENCH_VCPUS: counts from 1 to 254")
        })
        .collect();
    let tiny = harness::build_guest("tiny", "tiny.ld");

    // Per figure, one series per vCPU count.
    let figures = ["kill", "stop_to_exit", "pause", "resume"];
    let mut samples: Vec<[Vec<f64>; 4]> = Vec::new();
    for &n in &counts {
        let mut s: [Vec<f64>; 4] = Default::default();
        for r in 0..rounds {
            eprintln!("bench: stop, {n} vCPUs, round {}/{rounds}", r + 1);
            let f = round(&tiny, n);
            for (v, x) in s
                .iter_mut()
                .zip([f.kill, f.stop_to_exit, f.pause, f.resume])
            {
                v.push(x);
            }
        }
        samples.push(s);
    }

    let mut results = serde_json::Map::new();
    let mut lines = vec![format!(
        "| {:>5} | {:<26} | {:<26} | {:<26} | {:<26} |\n|{}|{}|{}|{}|{}|",
        "vCPUs",
        "kill() ms",
        "stop request to exit ms",
        "pause() ms",
        "resume() ms",
        "-".repeat(7),
        "-".repeat(28),
        "-".repeat(28),
        "-".repeat(28),
        "-".repeat(28)
    )];
    for (&n, s) in counts.iter().zip(&samples) {
        let cell = |v: &[f64]| {
            let st = harness::stats(v);
            format!("{:.3} [{:.3}, {:.3}]", st.median, st.min, st.max)
        };
        lines.push(format!(
            "| {n:>5} | {:<26} | {:<26} | {:<26} | {:<26} |",
            cell(&s[0]),
            cell(&s[1]),
            cell(&s[2]),
            cell(&s[3])
        ));
        let mut entry = serde_json::Map::new();
        for (name, v) in figures.iter().zip(s) {
            entry.insert(
                format!("{name}_ms"),
                json!({"stats": harness::stats(v).json(), "samples": v}),
            );
        }
        results.insert(n.to_string(), Value::Object(entry));
    }
    let v = json!({
        "benchmark": "stop",
        "pvm": harness::host_is_pvm(),
        "guest": {"kernel": tiny, "cmdline": "action=loop", "memory_mib": GUEST_MIB},
        "rounds": rounds,
        "settle_before_kill_ms": ms(SETTLE),
        "vcpus": results,
    });
    let json_path = harness::write_json("stop", &v);

    let names: Vec<String> = counts.iter().map(|n| format!("{n} vCPUs")).collect();
    let series: Vec<Vec<(&str, &[f64])>> = (0..figures.len())
        .map(|f| {
            names
                .iter()
                .zip(&samples)
                .map(|(name, s)| (name.as_str(), s[f].as_slice()))
                .collect()
        })
        .collect();
    let titles = ["kill()", "stop request to exit", "pause()", "resume()"];
    let panels: Vec<harness::Panel<'_>> = titles
        .iter()
        .zip(&series)
        .map(|(t, s)| (*t, "ms", s.as_slice()))
        .collect();
    let svg = harness::plot_panels("stop", &panels);
    println!(
        "{}\n\nmedian [min, max] of {rounds} rounds (p90 in the JSON)\nJSON: {}\nplot: {}",
        lines.join("\n"),
        json_path.display(),
        svg.display()
    );
}
