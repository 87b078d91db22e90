//! The boot benchmark: the project's kernel and initramfs booted N times by Ember and by
//! QEMU's microvm machine, interleaved run by run, timed from the outside (spawn to the
//! console marker, spawn to exit), with Ember's own phase table; the VMM-overhead benchmark
//! (a tiny PVH guest that prints one line and exits); and memory overhead at the marker.
//!
//! Boot timer from user space. Firecracker publishes "spawn to boot-timer signal": the
//! guest's init writes 123 to guest-physical 0xC000_0000 and the VMM notes the time. QEMU's
//! microvm has no such device (the write lands on unassigned MMIO and vanishes, and QEMU
//! 7.2 has no trace event for it), and a VMM's own clock starts at its `main()`, not at the
//! spawn. So the figure compared between the VMMs is the next thing the project's init does
//! that both VMMs show the same way: spawn to the console line `ember-init: ready`, which
//! init prints right after the poke (and after mounting /proc, /sys and two tmpfs), read by
//! this harness from each VMM's stdout pipe exactly as the other console markers are. Same
//! guest code path, same 16550 console, same pipe: the difference between the VMMs is theirs.
//! Ember's device figure (from its `--boot-timer` table) is reported beside it, with how far
//! the console line trails it. `isa-debug-exit`/debugcon would not be the same moment: it
//! needs a different guest write (a port, not the MMIO page) at a different point of init.
//!
//! Guest user space: each iteration also boots both VMMs with a command that prints one line
//! (`FIRST_OUTPUT`), timing "Run /init" to that line on the console (goal <= 1 s), and the
//! `true` boots give spawn to exit over spawn to "Run /init" (goal <= 1.2). Both are figures,
//! never checked. `EMBER_BENCH_NO_FIRST_OUTPUT=1` skips the extra boots.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// The console marker both VMMs are timed to.
pub const MARKER: &str = "Run /init as init process";
const GUEST_MIB: u64 = 256;
/// The line the project's init prints right after poking the boot timer.
pub const INIT_READY: &str = "ember-init: ready";
/// What the first-output boots' command prints.
pub const FIRST_OUTPUT: &str = "ember-bench: first output";
/// Goal for "Run /init" to the command's first output line (ms).
pub const GOAL_INIT_TO_OUTPUT_MS: f64 = 1000.0;
/// Goal for `true`: spawn to exit over spawn to "Run /init".
pub const GOAL_EXIT_OVER_INIT: f64 = 1.2;

/// What to run.
pub struct Options {
    /// Linux boots per VMM.
    pub boots: usize,
    /// Tiny-guest runs per VMM.
    pub overhead_runs: usize,
    /// Run QEMU too (when installed).
    pub qemu: bool,
    /// Also boot Ember with the other guest-memory backing (transparent huge pages against
    /// 4 KiB pages, `--thp`), interleaved, to check the default.
    pub compare_backing: bool,
    /// Per-boot timeout.
    pub timeout: Duration,
}

fn stats_json(v: &[f64]) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        stats(v).json()
    }
}

fn ratio(e: Option<f64>, q: Option<f64>) -> Value {
    match (e, q) {
        (Some(e), Some(q)) if q > 0.0 => json!(e / q),
        _ => Value::Null,
    }
}

fn sample_json(s: &Sample, phases: Option<&[(String, f64)]>) -> Value {
    json!({
        "to_marker_ms": s.to_marker_ms,
        "to_exit_ms": s.to_exit_ms.is_finite().then_some(s.to_exit_ms),
        "to_init_ready_ms": s.line_at(INIT_READY),
        "exit_code": s.code,
        "peak_rss_kib": s.peak_rss_kib,
        "guest_rss_kib": s.guest_rss_kib,
        "overhead_kib": s.overhead_kib(),
        "phases_ms": phases.map(|p| p.iter().map(|(n, t)| json!({"phase": n, "at_ms": t})).collect::<Vec<_>>()),
    })
}

/// Runs the benchmarks and returns the results; prints progress to stderr.
pub fn run(opts: &Options) -> Value {
    let (vmlinux, _) = kernel();
    let initrd = initramfs();
    let qemu = if opts.qemu { qemu_version() } else { None };
    let qemu_skipped = if !opts.qemu {
        Some("not requested".to_string())
    } else if qemu.is_none() {
        Some("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".to_string())
    } else {
        None
    };
    if let Some(why) = &qemu_skipped {
        eprintln!("bench: QEMU skipped: {why}");
    }
    let cmdline = guest_cmdline();
    let ember_args: Vec<String> = [
        "--kernel",
        &vmlinux.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--memory",
        &format!("{GUEST_MIB}M"),
        "--boot-timer",
        "--boot-timer-marker",
        MARKER,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Both guests run `true` as their command; init reports its status through port 0xf4
    // (QEMU's isa-debug-exit there exits with (status << 1) | 1) and powers off.
    let guest_command = ["true".to_string()];
    let encoded = vmm::command::encode(&guest_command).expect("encodable command");
    let q_args = qemu_args(
        &vmlinux,
        Some(&initrd),
        &format!("{cmdline} {encoded}"),
        GUEST_MIB,
    );

    // The first-output boots: the same guest with a command that prints one line.
    let first_output_command = ["echo".to_string(), FIRST_OUTPUT.to_string()];
    let first_output = std::env::var("EMBER_BENCH_NO_FIRST_OUTPUT").is_err();
    let mut fo_ember_args = ember_args.clone();
    fo_ember_args.push("--".to_string());
    fo_ember_args.extend(first_output_command.iter().cloned());
    let fo_encoded = vmm::command::encode(&first_output_command).expect("encodable command");
    let fo_q_args = qemu_args(
        &vmlinux,
        Some(&initrd),
        &format!("{cmdline} {fo_encoded}"),
        GUEST_MIB,
    );

    // The other memory backing than the default, for the backing comparison.
    let other_thp = if vmm::DEFAULT_THP { "off" } else { "on" };
    let mut other_args = ember_args.clone();
    other_args.extend(["--thp".to_string(), other_thp.to_string()]);
    let mut ember_args = ember_args;
    for args in [&mut ember_args, &mut other_args] {
        args.push("--".to_string());
        args.extend(guest_command.iter().cloned());
    }

    let mut ember = Vec::new();
    let mut ember_phases: Vec<Vec<(String, f64)>> = Vec::new();
    let mut other_backing = Vec::new();
    let mut qemu_samples = Vec::new();
    let (mut fo_ember, mut fo_qemu) = (Vec::new(), Vec::new());
    for i in 0..opts.boots {
        eprintln!("bench: Linux boot {}/{} (Ember)", i + 1, opts.boots);
        let s = timed_run(
            ember_bin(),
            &ember_args,
            Some(MARKER),
            GUEST_MIB,
            opts.timeout,
        );
        ember_phases.push(parse_phases(&s.stderr));
        ember.push(s);
        if opts.compare_backing {
            eprintln!(
                "bench: Linux boot {}/{} (Ember, --thp {other_thp})",
                i + 1,
                opts.boots
            );
            other_backing.push(timed_run(
                ember_bin(),
                &other_args,
                Some(MARKER),
                GUEST_MIB,
                opts.timeout,
            ));
        }
        if qemu_skipped.is_none() {
            eprintln!("bench: Linux boot {}/{} (QEMU)", i + 1, opts.boots);
            // microvm has no i8042: after the guest's panic=1 reboot it cannot reset, so on a
            // host where init dies (kvm-pvm) QEMU is ended once the guest says it reboots.
            let end = host_is_pvm().then_some("Rebooting in");
            qemu_samples.push(timed_run_until(
                "qemu-system-x86_64",
                &q_args,
                Some(MARKER),
                end,
                GUEST_MIB,
                opts.timeout,
            ));
        }
        if first_output {
            eprintln!(
                "bench: Linux boot {}/{} (Ember, first output)",
                i + 1,
                opts.boots
            );
            fo_ember.push(timed_run(
                ember_bin(),
                &fo_ember_args,
                Some(MARKER),
                GUEST_MIB,
                opts.timeout,
            ));
            if qemu_skipped.is_none() {
                eprintln!(
                    "bench: Linux boot {}/{} (QEMU, first output)",
                    i + 1,
                    opts.boots
                );
                fo_qemu.push(timed_run(
                    "qemu-system-x86_64",
                    &fo_q_args,
                    Some(MARKER),
                    GUEST_MIB,
                    opts.timeout,
                ));
            }
        }
    }

    // VMM overhead: a guest that prints one line and exits (tests/guests/hello.S).
    let tiny = build_guest("hello", "pvh.ld");
    let tiny_s = tiny.display().to_string();
    let e_args: Vec<String> = ["--kernel", &tiny_s, "--memory", "64M", "--boot-timer"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let q_tiny = qemu_args(&tiny, None, "", 64);
    let (mut e_tiny, mut q_tiny_s, mut startup) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.overhead_runs {
        let s = timed_run(ember_bin(), &e_args, None, 64, Duration::from_secs(30));
        if let Some((_, at)) = parse_phases(&s.stderr)
            .into_iter()
            .find(|(n, _)| n == "first KVM_RUN")
        {
            startup.push(at);
        }
        e_tiny.push(s.to_exit_ms);
        if qemu_skipped.is_none() {
            q_tiny_s.push(
                timed_run(
                    "qemu-system-x86_64",
                    &q_tiny,
                    None,
                    64,
                    Duration::from_secs(30),
                )
                .to_exit_ms,
            );
        }
    }

    let marker = |v: &[Sample]| v.iter().filter_map(|s| s.to_marker_ms).collect::<Vec<_>>();
    let exit = |v: &[Sample]| {
        v.iter()
            .map(|s| s.to_exit_ms)
            .filter(|t| t.is_finite())
            .collect::<Vec<_>>()
    };
    let overhead = |v: &[Sample]| {
        v.iter()
            .filter_map(|s| s.overhead_kib().map(|k| k as f64))
            .collect::<Vec<_>>()
    };
    let boot_timer: Vec<f64> = ember_phases
        .iter()
        .filter_map(|p| {
            p.iter()
                .find(|(n, _)| n == "boot-timer signal")
                .map(|(_, t)| *t)
        })
        .collect();
    let phase_names: Vec<String> = ember_phases
        .first()
        .map(|p| p.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let phase_medians: Vec<(String, f64)> = phase_names
        .iter()
        .filter_map(|name| {
            let v: Vec<f64> = ember_phases
                .iter()
                .filter_map(|p| p.iter().find(|(n, _)| n == name).map(|x| x.1))
                .collect();
            median(&v).map(|m| (name.clone(), m))
        })
        .collect();

    // Spawn to init's ready line, from every Linux boot with the default backing.
    let ready = |v: &[&[Sample]]| -> Vec<f64> {
        v.iter()
            .flat_map(|s| s.iter())
            .filter_map(|s| s.line_at(INIT_READY))
            .collect()
    };
    let (er, qr) = (
        ready(&[&ember, &fo_ember]),
        ready(&[&qemu_samples, &fo_qemu]),
    );
    // How far the ready line trails Ember's boot-timer signal (its clock starts at `main()`).
    let ready_lag: Vec<f64> = ember
        .iter()
        .zip(&ember_phases)
        .filter_map(|(s, p)| {
            let bt = p.iter().find(|(n, _)| n == "boot-timer signal")?.1;
            Some(s.line_at(INIT_READY)? - bt)
        })
        .collect();
    // "Run /init" to the command's first output line.
    let init_to_output = |v: &[Sample]| -> Vec<f64> {
        v.iter()
            .filter_map(|s| Some(s.line_at(FIRST_OUTPUT)? - s.line_at(MARKER)?))
            .collect()
    };
    let (eio, qio) = (init_to_output(&fo_ember), init_to_output(&fo_qemu));
    // `true`: spawn to exit over spawn to "Run /init".
    let exit_over_init = |v: &[Sample]| -> Vec<f64> {
        v.iter()
            .filter(|s| s.to_exit_ms.is_finite())
            .filter_map(|s| Some(s.to_exit_ms / s.line_at(MARKER)?))
            .collect()
    };
    let (eei, qei) = (exit_over_init(&ember), exit_over_init(&qemu_samples));
    let (em, qm) = (marker(&ember), marker(&qemu_samples));
    let om = marker(&other_backing);
    let backing_name = |thp: bool| if thp { "thp" } else { "4k" };
    let (ee, qe) = (exit(&ember), exit(&qemu_samples));
    let (eo, qo) = (overhead(&ember), overhead(&qemu_samples));
    json!({
        "benchmark": "boot",
        "host": {"pvm": host_is_pvm(), "qemu": qemu, "qemu_skipped": qemu_skipped},
        "guest": {
            "kernel": vmlinux.display().to_string(),
            "initrd": initrd.display().to_string(),
            "cmdline": cmdline,
            "memory_mib": GUEST_MIB,
            "marker": MARKER,
            "qemu_cpu": qemu_cpu(),
        },
        "boots": opts.boots,
        "linux": {
            "ember": {
                "to_marker_ms": stats_json(&em),
                "to_boot_timer_ms": stats_json(&boot_timer),
                "to_init_ready_ms": stats_json(&er),
                "init_ready_after_boot_timer_ms": stats_json(&ready_lag),
                "to_exit_ms": stats_json(&ee),
                "true_exit_over_init": stats_json(&eei),
                "phases_median_ms": phase_medians.iter().map(|(n, t)| json!({"phase": n, "at_ms": t})).collect::<Vec<_>>(),
                "samples": ember.iter().zip(&ember_phases).map(|(s, p)| sample_json(s, Some(p))).collect::<Vec<_>>(),
            },
            "qemu": {
                "to_marker_ms": stats_json(&qm),
                "to_init_ready_ms": stats_json(&qr),
                "to_exit_ms": stats_json(&qe),
                "true_exit_over_init": stats_json(&qei),
                "samples": qemu_samples.iter().map(|s| sample_json(s, None)).collect::<Vec<_>>(),
            },
            "ratio": {
                "to_marker_median": ratio(median(&em), median(&qm)),
                "to_exit_median": ratio(median(&ee), median(&qe)),
                "to_init_ready_median": ratio(median(&er), median(&qr)),
                "true_exit_over_init_median": ratio(median(&eei), median(&qei)),
            },
            "init_ready_line": INIT_READY,
            "goal_true_exit_over_init": GOAL_EXIT_OVER_INIT,
        },
        "first_output": {
            "run": first_output,
            "command": first_output_command,
            "goal_init_to_output_ms": GOAL_INIT_TO_OUTPUT_MS,
            "ember": {
                "init_to_output_ms": stats_json(&eio),
                "samples": fo_ember.iter().map(|s| sample_json(s, None)).collect::<Vec<_>>(),
            },
            "qemu": {
                "init_to_output_ms": stats_json(&qio),
                "samples": fo_qemu.iter().map(|s| sample_json(s, None)).collect::<Vec<_>>(),
            },
            "ratio": {"init_to_output_median": ratio(median(&eio), median(&qio))},
        },
        "vmm_overhead": {
            "runs": opts.overhead_runs,
            "ember": {"to_exit_ms": stats_json(&e_tiny), "startup_to_first_run_ms": stats_json(&startup), "samples_ms": e_tiny},
            "qemu": {"to_exit_ms": stats_json(&q_tiny_s), "samples_ms": q_tiny_s},
            "ratio": {"to_exit_median": ratio(median(&e_tiny), median(&q_tiny_s))},
        },
        "backing": {
            "compared": opts.compare_backing,
            "default": backing_name(vmm::DEFAULT_THP),
            "other": backing_name(!vmm::DEFAULT_THP),
            "default_to_marker_ms": stats_json(&em),
            "other_to_marker_ms": stats_json(&om),
            "other_samples": other_backing.iter().map(|s| sample_json(s, None)).collect::<Vec<_>>(),
            "ratio": {"other_over_default_to_marker_median": ratio(median(&om), median(&em))},
        },
        "memory": {
            "ember_overhead_kib": stats_json(&eo),
            "qemu_overhead_kib": stats_json(&qo),
            "ratio": ratio(median(&eo), median(&qo)),
        },
    })
}

fn med(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.get("median")?.as_f64()
}

/// The results as a Markdown table.
pub fn table(v: &Value) -> String {
    let mut out = vec![header()];
    let l = &v["linux"];
    out.push(row(
        "Linux: spawn to marker (median)",
        med(l, &["ember", "to_marker_ms"]),
        med(l, &["qemu", "to_marker_ms"]),
        "ms",
    ));
    for (name, key) in [("min", "min"), ("p90", "p90"), ("max", "max")] {
        let g = |who: &str| l[who]["to_marker_ms"].get(key).and_then(Value::as_f64);
        out.push(row(
            &format!("Linux: spawn to marker ({name})"),
            g("ember"),
            g("qemu"),
            "ms",
        ));
    }
    out.push(row(
        "Linux: spawn to init ready line",
        med(l, &["ember", "to_init_ready_ms"]),
        med(l, &["qemu", "to_init_ready_ms"]),
        "ms (boot timer, as both VMMs show it)",
    ));
    out.push(row(
        "Linux: start to boot-timer signal",
        med(l, &["ember", "to_boot_timer_ms"]),
        None,
        "ms (Ember's device, its own clock)",
    ));
    out.push(row(
        "Linux: ready line after boot timer",
        med(l, &["ember", "init_ready_after_boot_timer_ms"]),
        None,
        "ms",
    ));
    let f = &v["first_output"];
    out.push(row(
        "Linux: Run /init to first output",
        med(f, &["ember", "init_to_output_ms"]),
        med(f, &["qemu", "init_to_output_ms"]),
        &format!("ms (goal <= {GOAL_INIT_TO_OUTPUT_MS:.0})"),
    ));
    out.push(row(
        "Linux: true exit / Run /init",
        med(l, &["ember", "true_exit_over_init"]),
        med(l, &["qemu", "true_exit_over_init"]),
        &format!("spawn to exit over spawn to marker (goal <= {GOAL_EXIT_OVER_INIT})"),
    ));
    out.push(row(
        "Linux: spawn to exit (median)",
        med(l, &["ember", "to_exit_ms"]),
        med(l, &["qemu", "to_exit_ms"]),
        "ms",
    ));
    let o = &v["vmm_overhead"];
    out.push(row(
        "tiny guest: spawn to exit (median)",
        med(o, &["ember", "to_exit_ms"]),
        med(o, &["qemu", "to_exit_ms"]),
        "ms",
    ));
    out.push(row(
        "tiny guest: start to first KVM_RUN",
        med(o, &["ember", "startup_to_first_run_ms"]),
        None,
        "ms",
    ));
    let m = &v["memory"];
    let kib = |k: &str| {
        m[k].get("median")
            .and_then(Value::as_f64)
            .map(|x| x / 1024.0)
    };
    out.push(row(
        "RSS beyond guest memory (median)",
        kib("ember_overhead_kib"),
        kib("qemu_overhead_kib"),
        "MiB",
    ));
    let mut s = out.join("\n");
    let b = &v["backing"];
    if b["compared"].as_bool() == Some(true) {
        let (d, o) = (
            med(b, &["default_to_marker_ms"]),
            med(b, &["other_to_marker_ms"]),
        );
        let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0} ms"));
        s.push_str(&format!(
            "\n\nGuest memory backing (Ember, Linux spawn to marker, median): {} (default) {}, {} {}; {}/{} {}\n",
            b["default"].as_str().unwrap_or("?"),
            ms(d),
            b["other"].as_str().unwrap_or("?"),
            ms(o),
            b["default"].as_str().unwrap_or("?"),
            b["other"].as_str().unwrap_or("?"),
            b["ratio"]["other_over_default_to_marker_median"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{:.3}", 1.0 / r)),
        ));
    }
    if let Some(phases) = l["ember"]["phases_median_ms"].as_array() {
        s.push_str("\n\nEmber phases (median, ms since process start):\n");
        for p in phases {
            s.push_str(&format!(
                "  {:<28} {:>12.3}\n",
                p["phase"].as_str().unwrap_or(""),
                p["at_ms"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    s
}
