//! The boot benchmark: the project's kernel and initramfs booted N times by Ember and by
//! QEMU's microvm machine, interleaved run by run, timed from the outside (spawn to the
//! console marker, spawn to exit), with Ember's own phase table; the VMM-overhead benchmark
//! (a tiny PVH guest that prints one line and exits); and memory overhead at the marker.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// The console marker both VMMs are timed to.
pub const MARKER: &str = "Run /init as init process";
const GUEST_MIB: u64 = 256;

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
    // Both guests run `true` as their command and power off where guest user space runs
    // (ordinary KVM hosts); on kvm-pvm hosts init dies first and panic=1 resets the guest.
    let guest_command = ["true".to_string()];
    let encoded = vmm::command::encode(&guest_command).expect("encodable command");
    let q_args = qemu_args(
        &vmlinux,
        Some(&initrd),
        &format!("{cmdline} {encoded}"),
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
                "to_exit_ms": stats_json(&ee),
                "phases_median_ms": phase_medians.iter().map(|(n, t)| json!({"phase": n, "at_ms": t})).collect::<Vec<_>>(),
                "samples": ember.iter().zip(&ember_phases).map(|(s, p)| sample_json(s, Some(p))).collect::<Vec<_>>(),
            },
            "qemu": {
                "to_marker_ms": stats_json(&qm),
                "to_exit_ms": stats_json(&qe),
                "samples": qemu_samples.iter().map(|s| sample_json(s, None)).collect::<Vec<_>>(),
            },
            "ratio": {
                "to_marker_median": ratio(median(&em), median(&qm)),
                "to_exit_median": ratio(median(&ee), median(&qe)),
            },
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
        "Linux: spawn to boot-timer signal",
        med(l, &["ember", "to_boot_timer_ms"]),
        None,
        "ms (user space only)",
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
