//! Shared benchmark harness: the shared helpers from the `testkit` crate (locating and
//! building artefacts, spawning with a timeout) bound to this package's `ember` binary, and
//! what only the benchmarks need: QEMU's side, timing Ember and QEMU from the outside (spawn
//! to console marker, spawn to exit) with memory sampled at the marker, statistics, JSON
//! results and SVG plots under `target/ember-bench/`.
#![allow(dead_code)]

pub mod console_vm;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

pub use testkit::{host_is_pvm, repo_root};

/// Where results go.
pub fn out_dir() -> PathBuf {
    let d = repo_root().join("target/ember-bench");
    std::fs::create_dir_all(&d).expect("target/ember-bench");
    d
}

/// The `ember` binary of this build.
pub fn ember_bin() -> &'static str {
    testkit::ember_bin!()
}

/// Whether to run the benchmark `name`: not for `--list` (which prints its name) nor without
/// `--bench` (`cargo test` runs benchmarks that way: building them is the test).
pub fn bench_requested(name: &str) -> bool {
    if std::env::args().any(|a| a == "--list") {
        println!("{name}: benchmark");
        return false;
    }
    std::env::args().any(|a| a == "--bench")
}

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `(vmlinux, bzImage)` of the project's kernel.
pub fn kernel() -> (PathBuf, PathBuf) {
    testkit::guest_kernel().clone()
}

/// The project's initramfs.
pub fn initramfs() -> PathBuf {
    testkit::guest_initramfs().clone()
}

/// Compiles a test guest (tests/guests/<name>.c with <ld>) into target/ember-bench.
pub fn build_guest(name: &str, ld: &str) -> PathBuf {
    testkit::build_guest(name, ld, &out_dir())
}

/// QEMU's version line, if `qemu-system-x86_64` is installed.
pub fn qemu_version() -> Option<String> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// The guest command line Ember uses by default (plus the PVM options on a PVM host), which
/// QEMU gets too so both boot the same guest.
pub fn guest_cmdline() -> String {
    if host_is_pvm() {
        format!("{} {}", vmm::DEFAULT_CMDLINE, vmm::PVM_GUEST_CMDLINE)
    } else {
        vmm::DEFAULT_CMDLINE.to_string()
    }
}

/// QEMU's `-cpu`: the host CPU, or on a PVM host the model Ember's compatibility mode gives
/// (`arch::x86_64::cpuid`: kvm64's features with the host's family, without CX16/POPCNT, and
/// QEMU's default KVM paravirt features, which are the ones Ember keeps).
pub fn qemu_cpu() -> String {
    if host_is_pvm() {
        let mut s = String::from("kvm64,-cx16,-popcnt");
        if let Some((family, model, stepping)) = host_signature() {
            s.push_str(&format!(
                ",family={family},model={model},stepping={stepping}"
            ));
        }
        s
    } else {
        "host".to_string()
    }
}

/// The host CPU's family, model and stepping from /proc/cpuinfo.
fn host_signature() -> Option<(u32, u32, u32)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |k: &str| -> Option<u32> {
        info.lines()
            .find(|l| l.starts_with(k) && l[k.len()..].trim_start().starts_with(':'))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    };
    Some((field("cpu family")?, field("model")?, field("stepping")?))
}

/// QEMU microvm arguments for `kernel`, `initrd`, `cmdline` and `mem_mib`.
pub fn qemu_args(kernel: &Path, initrd: Option<&Path>, cmdline: &str, mem_mib: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-enable-kvm",
        "-cpu",
        &qemu_cpu(),
        "-m",
        &mem_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=1",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(kernel.display().to_string());
    if let Some(i) = initrd {
        a.push("-initrd".into());
        a.push(i.display().to_string());
    }
    a.push("-append".into());
    a.push(cmdline.to_string());
    a
}

/// One timed run of a VMM process.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Spawn to the first appearance of the marker on the console (ms).
    pub to_marker_ms: Option<f64>,
    /// Spawn to process exit (ms).
    pub to_exit_ms: f64,
    /// Exit code.
    pub code: Option<i32>,
    /// Peak RSS of the VMM process when the marker appeared (KiB).
    pub peak_rss_kib: Option<u64>,
    /// Resident guest RAM at that moment (KiB): the largest anonymous mapping's RSS.
    pub guest_rss_kib: Option<u64>,
    /// Everything on stdout.
    pub stdout: String,
    /// Each complete stdout line (the console) with when it was read (ms since spawn; the
    /// time of the read that brought its newline), without its line ending.
    pub lines: Vec<(f64, String)>,
    /// Everything on stderr.
    pub stderr: String,
}

impl Sample {
    /// Peak RSS beyond touched guest memory (KiB).
    pub fn overhead_kib(&self) -> Option<u64> {
        Some(self.peak_rss_kib?.saturating_sub(self.guest_rss_kib?))
    }

    /// When the first console line containing `needle` was read (ms since spawn).
    pub fn line_at(&self, needle: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// RSS (KiB) of the largest mapping of at least `min_kib` (guest RAM).
fn guest_mapping_rss(pid: u32, min_kib: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut best: Option<(u64, u64)> = None;
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("Size:") => size = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let rss: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if size >= min_kib && best.is_none_or(|(s, _)| size > s) {
                    best = Some((size, rss));
                }
            }
            _ => {}
        }
    }
    best.map(|(_, rss)| rss)
}

/// Spawns `program args`, timing spawn to `marker` on stdout and spawn to exit; samples
/// memory when the marker appears (guest RAM is the mapping of at least `guest_mib`).
pub fn timed_run(
    program: &str,
    args: &[String],
    marker: Option<&str>,
    guest_mib: u64,
    timeout: Duration,
) -> Sample {
    timed_run_until(program, args, marker, None, guest_mib, timeout)
}

/// Like [`timed_run`], but kills the process once `end` appears on the console (for a VMM that
/// cannot end the VM by itself there); `to_exit_ms` is then NaN.
pub fn timed_run_until(
    program: &str,
    args: &[String],
    marker: Option<&str>,
    end: Option<&str>,
    guest_mib: u64,
    timeout: Duration,
) -> Sample {
    let mut spawn = testkit::Spawn::new(program)
        .args(args)
        .poll(Duration::from_micros(200));
    let (mem_tx, mem_rx) = mpsc::channel();
    if let Some(m) = marker {
        spawn = spawn.marker(m).on_marker(move |pid| {
            let peak = status_field(pid, "VmHWM:");
            let guest = guest_mapping_rss(pid, guest_mib * 1024);
            let _ = mem_tx.send((peak, guest));
        });
    }
    if let Some(e) = end {
        spawn = spawn.end_at(e);
    }
    let run = spawn.run(timeout);
    let (peak_rss_kib, guest_rss_kib) = mem_rx.try_recv().unwrap_or((None, None));
    Sample {
        to_marker_ms: run.marker_at.map(|at| at.as_secs_f64() * 1e3),
        to_exit_ms: if run.ended_at_line {
            f64::NAN
        } else {
            run.elapsed.as_secs_f64() * 1e3
        },
        code: run.status.and_then(|s| s.code()),
        peak_rss_kib,
        guest_rss_kib,
        stdout: run.stdout,
        lines: run.lines,
        stderr: run.stderr,
    }
}

/// Ember's `--boot-timer` table from its stderr: `(phase, ms since process start)`.
pub fn parse_phases(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("ember:   ")?;
            let mut nums = l.split_whitespace().rev();
            let _delta: f64 = nums.next()?.parse().ok()?;
            let at: f64 = nums.next()?.parse().ok()?;
            let name = l[..l.find(|c: char| c.is_ascii_digit())?]
                .trim()
                .to_string();
            Some((name, at))
        })
        .collect()
}

/// min, median, p90 and max.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub n: usize,
}

/// Statistics of `v` (empty: all zero).
pub fn stats(v: &[f64]) -> Stats {
    if v.is_empty() {
        return Stats::default();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    Stats {
        min: s[0],
        median: q(0.5),
        p90: q(0.9),
        max: s[s.len() - 1],
        n: s.len(),
    }
}

impl Stats {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({"n": self.n, "min": self.min, "median": self.median, "p90": self.p90, "max": self.max})
    }
}

/// Median, or None when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| stats(v).median)
}

/// Formats a ratio row: `name | ember | qemu | ratio`.
pub fn row(name: &str, ember: Option<f64>, qemu: Option<f64>, unit: &str) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let ratio = match (ember, qemu) {
        (Some(e), Some(q)) if q > 0.0 => format!("{:.3}", e / q),
        _ => "-".to_string(),
    };
    format!(
        "| {name:<34} | {:>12} | {:>12} | {ratio:>11} |  {unit}",
        f(ember),
        f(qemu)
    )
}

/// The table header for [`row`].
pub fn header() -> String {
    format!(
        "| {:<34} | {:>12} | {:>12} | {:>11} |\n|{}|{}|{}|{}|",
        "figure",
        "Ember",
        "QEMU",
        "Ember/QEMU",
        "-".repeat(36),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(13)
    )
}

/// Writes `value` as pretty JSON to target/ember-bench/<name>.json; returns the path.
pub fn write_json(name: &str, value: &Value) -> PathBuf {
    let p = out_dir().join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_string_pretty(value).expect("json")).expect("write json");
    p
}

/// Draws both distributions side by side (one dot per sample) and, if given, a stacked bar
/// of Ember's median phases; writes target/ember-bench/<name>.svg.
pub fn plot(
    name: &str,
    title: &str,
    series: &[(&str, &[f64])],
    phases: &[(String, f64)],
) -> PathBuf {
    let p = out_dir().join(format!("{name}.svg"));
    draw(&p, title, series, phases);
    p
}

/// A plot panel: title, unit of the y axis, and the named series of samples.
pub type Panel<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [f64])]);

/// Draws one dot-distribution panel per `(title, unit, series)`, side by side; writes
/// target/ember-bench/<name>.svg.
pub fn plot_panels(name: &str, panels: &[Panel<'_>]) -> PathBuf {
    use plotters::prelude::*;
    let p = out_dir().join(format!("{name}.svg"));
    let width = 320 * panels.len().max(1) as u32;
    {
        let root = SVGBackend::new(&p, (width, 400)).into_drawing_area();
        let _ = root.fill(&WHITE);
        for (area, (title, unit, series)) in root
            .split_evenly((1, panels.len().max(1)))
            .iter()
            .zip(panels)
        {
            draw_dots(area, title, unit, series);
        }
        let _ = root.present();
    }
    p
}

/// One panel: each series' samples as dots in its own column, with a bar at the median.
fn draw_dots<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    series: &[(&str, &[f64])],
) {
    use plotters::prelude::*;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    if let Ok(mut chart) = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(series.len() as f64 - 0.5), 0f64..max)
    {
        let names: Vec<String> = series.iter().map(|(n, _)| n.to_string()).collect();
        let _ = chart
            .configure_mesh()
            .x_labels(series.len())
            .x_label_formatter(&|x| names.get(x.round() as usize).cloned().unwrap_or_default())
            .y_desc(unit)
            .draw();
        let colors = [RED, BLUE, GREEN, MAGENTA];
        for (i, (_, v)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            let n = v.len().max(1) as f64;
            let _ = chart.draw_series(v.iter().enumerate().map(|(j, &y)| {
                let x = i as f64 + (j as f64 / n - 0.5) * 0.5;
                Circle::new((x, y), 4, c.filled())
            }));
            let m = median(v).unwrap_or(0.0);
            let _ = chart.draw_series(std::iter::once(PathElement::new(
                vec![(i as f64 - 0.35, m), (i as f64 + 0.35, m)],
                c.stroke_width(2),
            )));
        }
    }
}

fn draw(p: &Path, title: &str, series: &[(&str, &[f64])], phases: &[(String, f64)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(p, (900, 480)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let (left, right) = root.split_horizontally(560);
    draw_dots(&left, title, "ms", series);
    if !phases.is_empty() {
        let total = phases.last().map_or(1.0, |p| p.1).max(1e-6);
        if let Ok(mut chart) = ChartBuilder::on(&right)
            .caption("Ember phases (median, ms)", ("sans-serif", 16))
            .margin(15)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..total * 1.05)
        {
            let _ = chart.configure_mesh().disable_x_mesh().x_labels(0).draw();
            let palette = [
                RED,
                BLUE,
                GREEN,
                CYAN,
                MAGENTA,
                YELLOW,
                BLACK,
                RGBColor(255, 128, 0),
                RGBColor(128, 0, 255),
            ];
            let mut prev = 0.0;
            for (i, (name, at)) in phases.iter().enumerate() {
                let c = palette[i % palette.len()];
                let _ = chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.2, prev), (0.5, *at)],
                        c.mix(0.7).filled(),
                    )))
                    .map(|s| {
                        s.label(format!("{name} {:.1}", at - prev))
                            .legend(move |(x, y)| {
                                Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled())
                            })
                    });
                prev = *at;
            }
            let _ = chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 10))
                .border_style(BLACK)
                .draw();
        }
    }
    let _ = root.present();
}
