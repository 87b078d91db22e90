//! `cargo bench --bench snapshot`: what snapshots cost and what restoring from one gives.
//!
//! Tiny guest (tests/guests/tiny.c, 256 MiB of RAM, through the library unless said):
//! - `pause()` of a spinning guest (`action=loop`), then `snapshot()` of the paused VM (call
//!   to return: vCPU states, devices, the sparse memory file and the state file written and
//!   synced), with the [`vmm::snapshot::SnapshotInfo`] it returns (memory bytes written
//!   against RAM) and the memory file's allocated size on disk;
//! - `Vm::restore` to the first `KVM_RUN` (`VmExit::timestamps`: `start` to `first_run`),
//!   and the call's own duration;
//! - restore from process spawn: a `pattern` guest snapshotted by the CLI at a console marker
//!   (`--snapshot DIR --snapshot-on-marker STR`), then `ember --restore DIR` timed from spawn
//!   to the first byte of the continuation on its stdout (and to its exit);
//! - clones per second: `Vm::restore` + `kill()` in a loop for a fixed time, on 1 thread and
//!   on N threads (`EMBER_BENCH_THREADS`, default the CPU count, at least 2);
//! - memory per clone with 1, 10 and 100 clones of the spinning guest alive in this process:
//!   `/proc/self/smaps` summed over the mappings of the snapshot's memory file (guest RAM:
//!   Rss, Pss, Private_Clean + Private_Dirty, Shared_Clean + Shared_Dirty; a page counts as
//!   shared once two mappings, here two clones, map it), and `/proc/self/smaps_rollup` of the
//!   whole process against a baseline taken before the first clone (what a clone adds in user
//!   space; kernel memory, KVM's included, is not in it).
//!
//! Linux (the project's kernel and initramfs, 256 MiB): one boot snapshotted by the CLI at
//! "ember-init: ready" (`ember --kernel K --initrd I --snapshot DIR`; the init then waits for
//! its command on the console), then, interleaved round by round, `ember --restore DIR -- echo
//! hi`, QEMU microvm restoring the same kernel and initramfs from a migration file
//! (`-incoming "exec:cat FILE"`, written by `migrate "exec:cat > FILE"` over QMP from a QEMU
//! booted to the same point with `ember.wait`; the command line is typed on its serial console
//! once QMP says it runs, as Ember's restore types it), and `runc run` of a static busybox
//! `echo hi` in a minimal OCI bundle: spawn to the line `hi` and spawn to exit. Against them, a
//! cold `ember --kernel K --initrd I -- echo hi` boot (spawn to `hi`). Then memory per clone
//! as for the tiny guest, with 1 and 10 Linux clones in this process, each running
//! `sh -c 'echo clone-up; exec sleep 100000'`. QEMU or runc missing or failing here is a
//! printed note and a `skipped` entry in the JSON, not a failure.
//!
//! Environment: `EMBER_BENCH_ROUNDS` (tiny-guest rounds, default 10), `EMBER_BENCH_LINUX_N`
//! (Linux restores per contender, default 5), `EMBER_BENCH_COLD_N` (cold Linux boots, default
//! 1), `EMBER_BENCH_CLONE_SECS` (seconds per clones-per-second run, default 2),
//! `EMBER_BENCH_THREADS`, `EMBER_BENCH_CLONES` (comma-separated clone counts, default
//! `1,10,100`), `EMBER_BENCH_LINUX_CLONES` (default `1,10`), `EMBER_BENCH_NO_LINUX=1`,
//! `EMBER_BENCH_NO_QEMU=1`, `EMBER_BENCH_NO_RUNC=1`.
//! Results: a table on stdout, target/ember-bench/snapshot.json and snapshot.svg. Figures
//! only: nothing here is checked against a goal.

#[path = "harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, Vm, VmConfig};

/// Guest RAM of every guest here (MiB).
const GUEST_MIB: u64 = 256;
/// How long a tiny guest gets to print its first line.
const TINY_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of one Linux boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Timeout of one restore or container run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The line the project's init prints when it is ready (and, snapshotted, waits for a command).
const INIT_READY: &str = "ember-init: ready";
/// Lines the `pattern` guest prints; the CLI snapshot is taken at [`PATTERN_MARKER`].
const PATTERN_LINES: u32 = 300;
const PATTERN_MARKER: &str = "line 100:";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats_json(v: &[f64]) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        json!({"stats": harness::stats(v).json(), "samples": v})
    }
}

fn captured() -> (Console, Capture) {
    let out = Capture::new(1 << 20);
    (
        Console {
            output: ConsoleOutput::Capture(out.clone()),
            input: ConsoleInput::None,
        },
        out,
    )
}

fn wait_for_text(vm: &vmm::VmHandle, out: &Capture, text: &str) {
    let deadline = Instant::now() + TINY_TIMEOUT;
    while !out.text().contains(text) {
        assert!(
            Instant::now() < deadline && !vm.has_ended(),
            "the tiny guest did not print {text:?}: {:?}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn tiny_config(tiny: &Path, action: &str) -> VmConfig {
    VmConfig::builder(tiny)
        .cmdline(format!("action={action}"))
        .memory_mib(GUEST_MIB)
        .build()
        .expect("config")
}

/// Bytes the file takes on disk (a sparse file's holes take none).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

// ---------------------------------------------------------------------------------------------
// A spawned program whose stdout is read as it comes, each read stamped.

/// A running program: stdout chunks arrive on a channel stamped with ms since spawn.
struct Proc {
    child: Child,
    t0: Instant,
    rx: mpsc::Receiver<(f64, Vec<u8>)>,
    err: Option<std::thread::JoinHandle<String>>,
    out: Vec<u8>,
    line_start: usize,
    lines: Vec<(f64, String)>,
    first_byte: Option<f64>,
    eof: bool,
}

/// What a program did.
struct Outcome {
    first_byte_ms: Option<f64>,
    lines: Vec<(f64, String)>,
    /// Spawn to exit (ms); None when it had to be killed.
    exit_ms: Option<f64>,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn line_at(&self, pred: impl Fn(&str) -> bool) -> Option<f64> {
        self.lines.iter().find(|(_, l)| pred(l)).map(|(t, _)| *t)
    }
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl Proc {
    fn spawn(cmd: &mut Command, stdin: bool) -> std::io::Result<Proc> {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn()?;
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((ms(t0.elapsed()), buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Proc {
            child,
            t0,
            rx,
            err: Some(err),
            out: Vec::new(),
            line_start: 0,
            lines: Vec::new(),
            first_byte: None,
            eof: false,
        })
    }

    fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Takes one chunk of output; false at end of output or at `deadline`.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok((at, bytes)) => {
                self.first_byte.get_or_insert(at);
                self.out.extend_from_slice(&bytes);
                while let Some(nl) = self.out[self.line_start..].iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&self.out[self.line_start..][..nl]);
                    self.lines
                        .push((at, line.trim_end_matches('\r').to_string()));
                    self.line_start += nl + 1;
                }
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
        }
    }

    /// Reads output until a complete line satisfies `pred`: when it was read (ms since spawn),
    /// or None at end of output or after `timeout`.
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some((t, _)) = self.lines[checked..].iter().find(|(_, l)| pred(l)) {
                return Some(*t);
            }
            checked = self.lines.len();
            if !self.pump(deadline) {
                return None;
            }
        }
    }

    /// Reads everything and waits for the exit (killing the program after `timeout`).
    fn finish(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        while self.pump(deadline) {}
        let (status, exit_ms) = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break (Some(s), Some(ms(self.t0.elapsed()))),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break (None, None);
                }
            }
        };
        // Whatever came after the last read (the reader ends with the program).
        while self.pump(Instant::now() + Duration::from_millis(200)) {}
        if self.line_start < self.out.len() {
            let at = ms(self.t0.elapsed());
            let rest = String::from_utf8_lossy(&self.out[self.line_start..]).into_owned();
            self.lines.push((at, rest));
        }
        let stderr = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Outcome {
            first_byte_ms: self.first_byte,
            lines: std::mem::take(&mut self.lines),
            exit_ms,
            status,
            stdout: String::from_utf8_lossy(&self.out).into_owned(),
            stderr,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Spawns and finishes `program args` (stdin /dev/null).
fn run(program: &str, args: &[String], timeout: Duration) -> Result<Outcome, String> {
    Proc::spawn(Command::new(program).args(args), false)
        .map(|p| p.finish(timeout))
        .map_err(|e| format!("cannot run {program}: {e}"))
}

fn is_hi(l: &str) -> bool {
    l.trim() == "hi"
}

/// The tail of a program's output, for notes.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" / ")
}

// ---------------------------------------------------------------------------------------------
// Memory of this process.

/// Sums of smaps fields (KiB).
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
    shared: u64,
}

impl Mem {
    fn add_field(&mut self, key: &str, kib: u64) {
        match key {
            "Rss:" => self.rss += kib,
            "Pss:" => self.pss += kib,
            "Private_Clean:" | "Private_Dirty:" => self.private += kib,
            "Shared_Clean:" | "Shared_Dirty:" => self.shared += kib,
            _ => {}
        }
    }
    fn json(&self) -> Value {
        json!({"rss_kib": self.rss, "pss_kib": self.pss, "private_kib": self.private, "shared_kib": self.shared})
    }
}

/// Whole process: /proc/self/smaps_rollup.
fn process_mem() -> Mem {
    let mut m = Mem::default();
    for line in std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
    {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse().ok())) {
            m.add_field(k, v);
        }
    }
    m
}

/// The mappings of `file` in /proc/self/smaps, summed, and how many there are.
fn file_mappings_mem(file: &Path) -> (Mem, usize) {
    let want = file.to_string_lossy();
    let mut m = Mem::default();
    let mut count = 0;
    let mut inside = false;
    for line in std::fs::read_to_string("/proc/self/smaps")
        .unwrap_or_default()
        .lines()
    {
        let mut it = line.split_whitespace();
        let Some(first) = it.next() else { continue };
        let is_header = first.split_once('-').is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        });
        if is_header {
            inside = line.split_whitespace().nth(5).is_some_and(|p| p == want);
            count += usize::from(inside);
        } else if inside {
            if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                m.add_field(first, v);
            }
        }
    }
    (m, count)
}

/// Raises this process's open-file limit to its hard limit (100 VMs hold many descriptors).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tiny guest.

struct TinyResults {
    json: Value,
    pause: Vec<f64>,
    snapshot: Vec<f64>,
    to_first_run: Vec<f64>,
    restore_call: Vec<f64>,
    cli_first_byte: Vec<f64>,
    cli_exit: Vec<f64>,
    clones_per_s: Vec<(usize, f64)>,
    mem: Vec<(usize, Mem, Mem)>,
    info: Option<vmm::snapshot::SnapshotInfo>,
    mem_file_on_disk: u64,
    clone_errors: Vec<String>,
}

fn tiny_bench(tiny: &Path, work: &Path, rounds: usize) -> TinyResults {
    let loop_dir = work.join("tiny-loop");
    // Pause and snapshot: a fresh spinning guest per round.
    let (mut pause, mut snapshot) = (Vec::new(), Vec::new());
    let mut info = None;
    for r in 0..rounds {
        eprintln!("bench: snapshot, tiny pause + snapshot {}/{rounds}", r + 1);
        let (console, out) = captured();
        let mut vm =
            Vm::start_with_console(tiny_config(tiny, "loop"), console).expect("start tiny");
        wait_for_text(&vm, &out, "tiny: looping");
        let t = Instant::now();
        vm.pause().expect("pause");
        pause.push(ms(t.elapsed()));
        let t = Instant::now();
        let i = vm.snapshot(&loop_dir).expect("snapshot");
        snapshot.push(ms(t.elapsed()));
        info = Some(i);
        vm.resume();
        vm.kill();
    }
    let mem_file_on_disk = allocated(&loop_dir.join(vmm::snapshot::MEMORY_FILE));

    // Restore to the first KVM_RUN, in the library.
    let (mut to_first_run, mut restore_call) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("bench: snapshot, tiny library restore {}/{rounds}", r + 1);
        let t = Instant::now();
        let mut vm = Vm::restore(&loop_dir, Console::default()).expect("restore");
        restore_call.push(ms(t.elapsed()));
        // Time for the vCPU to enter the guest before the kill.
        std::thread::sleep(Duration::from_millis(20));
        let exit = vm.kill();
        let ts = exit.timestamps;
        if let Some(f) = ts.first_run {
            to_first_run.push(ms(f.duration_since(ts.start)));
        }
    }

    // Restore from process spawn: the CLI's snapshot of a `pattern` guest at a marker.
    let pattern_dir = work.join("tiny-pattern");
    let tiny_s = tiny.display().to_string();
    let snap = run(
        harness::ember_bin(),
        &[
            "--kernel".into(),
            tiny_s,
            "--cmdline".into(),
            format!("action=pattern:{PATTERN_LINES}"),
            "--memory".into(),
            format!("{GUEST_MIB}M"),
            "--snapshot".into(),
            pattern_dir.display().to_string(),
            "--snapshot-on-marker".into(),
            PATTERN_MARKER.into(),
        ],
        TINY_TIMEOUT,
    )
    .expect("ember");
    let (mut cli_first_byte, mut cli_exit, mut cli_phase_first_run) =
        (Vec::new(), Vec::new(), Vec::new());
    if snap.code() == Some(0) {
        for r in 0..rounds {
            eprintln!("bench: snapshot, tiny CLI restore {}/{rounds}", r + 1);
            let o = run(
                harness::ember_bin(),
                &[
                    "--boot-timer".into(),
                    "--restore".into(),
                    pattern_dir.display().to_string(),
                ],
                TINY_TIMEOUT,
            )
            .expect("ember");
            if let Some(t) = o.first_byte_ms {
                cli_first_byte.push(t);
            }
            if let (Some(t), Some(0)) = (o.exit_ms, o.code()) {
                cli_exit.push(t);
            }
            if let Some((_, at)) = harness::parse_phases(&o.stderr)
                .into_iter()
                .find(|(n, _)| n == "first KVM_RUN")
            {
                cli_phase_first_run.push(at);
            }
        }
    } else {
        eprintln!(
            "bench: the CLI snapshot of the pattern guest failed: {}",
            snap.stderr
        );
    }

    // Clones per second: restore + kill in a loop.
    let secs: f64 = harness::env_or("EMBER_BENCH_CLONE_SECS", 2.0);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let threads: usize = harness::env_or("EMBER_BENCH_THREADS", cpus);
    let mut clones_per_s = Vec::new();
    let mut rate_json = Vec::new();
    for &n in &[1, threads] {
        eprintln!("bench: snapshot, clones per second on {n} thread(s), {secs} s");
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let per_thread: Vec<(usize, usize, Vec<f64>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        let (mut done, mut ran, mut lat) = (0, 0, Vec::new());
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let mut vm =
                                Vm::restore(&loop_dir, Console::default()).expect("restore clone");
                            let exit = vm.kill();
                            lat.push(ms(t.elapsed()));
                            done += 1;
                            ran += usize::from(exit.timestamps.first_run.is_some());
                        }
                        (done, ran, lat)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("clone thread"))
                .collect()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let done: usize = per_thread.iter().map(|p| p.0).sum();
        let ran: usize = per_thread.iter().map(|p| p.1).sum();
        let lat: Vec<f64> = per_thread.into_iter().flat_map(|p| p.2).collect();
        let rate = done as f64 / elapsed;
        clones_per_s.push((n, rate));
        rate_json.push(json!({
            "threads": n, "clones": done, "seconds": elapsed, "clones_per_s": rate,
            "reached_kvm_run": ran,
            "restore_plus_kill_ms": harness::stats(&lat).json(),
        }));
    }

    // Memory per clone: clones of a spinning guest alive at once.
    let counts = count_list("EMBER_BENCH_CLONES", "1,10,100");
    let (mem, mem_json, clone_errors) = clone_memory(&loop_dir, &counts, None);
    let info_json = info.map(|i| {
        json!({
            "ram_bytes": i.ram_bytes,
            "memory_bytes_written": i.memory_bytes_written,
            "state_bytes": i.state_bytes,
            "memory_file_allocated_bytes": mem_file_on_disk,
        })
    });
    let json = json!({
        "guest": {"kernel": tiny, "memory_mib": GUEST_MIB},
        "rounds": rounds,
        "pause_ms": stats_json(&pause),
        "snapshot_paused_ms": stats_json(&snapshot),
        "snapshot": info_json,
        "library_restore": {
            "start_to_first_run_ms": stats_json(&to_first_run),
            "restore_call_ms": stats_json(&restore_call),
        },
        "cli_restore": {
            "snapshot_marker": PATTERN_MARKER,
            "snapshot_exit_code": snap.code(),
            "spawn_to_first_byte_ms": stats_json(&cli_first_byte),
            "spawn_to_exit_ms": stats_json(&cli_exit),
            "process_start_to_first_run_ms": stats_json(&cli_phase_first_run),
        },
        "clones_per_second": rate_json,
        "memory_per_clone": {
            "method": MEM_METHOD,
            "guest": "tiny action=loop (each clone spins)",
            "counts": mem_json,
        },
    });
    TinyResults {
        json,
        pause,
        snapshot,
        to_first_run,
        restore_call,
        cli_first_byte,
        cli_exit,
        clones_per_s,
        mem,
        info,
        mem_file_on_disk,
        clone_errors,
    }
}

/// How the memory per clone is measured.
const MEM_METHOD: &str = concat!(
    "guest RAM: /proc/self/smaps summed over the mappings of the snapshot's memory file; ",
    "process: /proc/self/smaps_rollup minus a baseline taken before the first clone; ",
    "KiB, divided by the clones alive"
);

/// A comma-separated list of counts from `var`, or `default`.
fn count_list(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Per clone count: (clones, guest RAM per clone, process per clone).
type CloneMem = Vec<(usize, Mem, Mem)>;

/// Restores clones of `dir` in this process until `counts[i]` are alive, and measures this
/// process's memory at each count. With `command`, each clone runs it (a Linux guest waiting
/// for its command) and is counted alive once its console shows `clone-up`.
fn clone_memory(
    dir: &Path,
    counts: &[usize],
    command: Option<&[String]>,
) -> (CloneMem, Vec<Value>, Vec<String>) {
    let mem_file =
        std::fs::canonicalize(dir.join(vmm::snapshot::MEMORY_FILE)).expect("memory file");
    raise_nofile();
    let base = process_mem();
    let mut alive: Vec<(vmm::VmHandle, Capture)> = Vec::new();
    let (mut mem, mut out, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    'counts: for &n in counts {
        eprintln!("bench: snapshot, {n} clones of {} alive", dir.display());
        let t = Instant::now();
        while alive.len() < n {
            let (console, cap) = captured();
            let r = match command {
                Some(c) => Vm::restore_with_command(dir, console, Some(c.to_vec())),
                None => Vm::restore(dir, console),
            };
            match r {
                Ok(vm) => alive.push((vm, cap)),
                Err(e) => {
                    let msg = format!("clone {} of {n}: {e}", alive.len() + 1);
                    eprintln!("bench: {msg}");
                    errors.push(msg);
                    break 'counts;
                }
            }
        }
        let restore_ms = ms(t.elapsed());
        let t = Instant::now();
        if command.is_some() {
            let deadline = Instant::now() + RUN_TIMEOUT;
            while alive
                .iter()
                .any(|(vm, c)| !vm.has_ended() && !c.text().contains("clone-up"))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let up_ms = ms(t.elapsed());
        // Every clone has entered the guest by then.
        std::thread::sleep(Duration::from_millis(300));
        let ended = alive.iter().filter(|(vm, _)| vm.has_ended()).count();
        let (guest, maps) = file_mappings_mem(&mem_file);
        let now = process_mem();
        let delta = Mem {
            rss: now.rss.saturating_sub(base.rss),
            pss: now.pss.saturating_sub(base.pss),
            private: now.private.saturating_sub(base.private),
            shared: now.shared.saturating_sub(base.shared),
        };
        let per = |m: Mem| Mem {
            rss: m.rss / n as u64,
            pss: m.pss / n as u64,
            private: m.private / n as u64,
            shared: m.shared / n as u64,
        };
        mem.push((n, per(guest), per(delta)));
        out.push(json!({
            "clones": n,
            "ended_early": ended,
            "restore_ms": restore_ms,
            "then_all_up_ms": command.map(|_| up_ms),
            "memory_file_mappings": maps,
            "guest_ram_total": guest.json(),
            "guest_ram_per_clone": per(guest).json(),
            "process_delta_total": delta.json(),
            "process_delta_per_clone": per(delta).json(),
            "process_now": now.json(),
        }));
    }
    drop(alive);
    (mem, out, errors)
}

// ---------------------------------------------------------------------------------------------
// Linux: Ember's restore against QEMU's and runc.

/// QEMU's arguments for the Linux guest waiting for its command at "ready".
fn qemu_linux_args(vmlinux: &Path, initrd: &Path, qmp: &Path) -> Vec<String> {
    let cmdline = format!("{} {}", harness::guest_cmdline(), vmm::command::WAIT_PARAM);
    let mut a = harness::qemu_args(vmlinux, Some(initrd), &cmdline, GUEST_MIB);
    a.push("-qmp".into());
    a.push(format!("unix:{},server=on,wait=off", qmp.display()));
    a
}

/// Boots QEMU to "ready" and migrates it to `file` (live: QEMU stops the guest for the last
/// pass itself, and a destination autostarts only when its source ran).
fn qemu_snapshot(vmlinux: &Path, initrd: &Path, work: &Path, file: &Path) -> Result<Value, String> {
    let sock = work.join("qmp-src.sock");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(file);
    let mut p = Proc::spawn(
        Command::new("qemu-system-x86_64").args(qemu_linux_args(vmlinux, initrd, &sock)),
        true,
    )
    .map_err(|e| format!("qemu: {e}"))?;
    let ready = p.wait_line(|l| l.contains(INIT_READY), BOOT_TIMEOUT);
    let Some(ready) = ready else {
        let o = p.finish(Duration::from_secs(1));
        return Err(format!(
            "QEMU did not print '{INIT_READY}': {} {}",
            tail(&o.stdout),
            tail(&o.stderr)
        ));
    };
    let mut q = harness::qmp::Qmp::connect(&sock, Duration::from_secs(10))?;
    let t = Instant::now();
    q.cmd(
        "migrate",
        Some(json!({"uri": format!("exec:cat > {}", file.display())})),
    )?;
    let status = loop {
        let r = q.cmd("query-migrate", None)?;
        let s = r["status"].as_str().unwrap_or("").to_string();
        if s == "completed" || s == "failed" || s == "cancelled" {
            break (s, r);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let migrate_ms = ms(t.elapsed());
    let _ = q.cmd("quit", None);
    let _ = p.finish(Duration::from_secs(10));
    if status.0 != "completed" {
        return Err(format!("migration {}: {}", status.0, status.1));
    }
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    Ok(json!({
        "spawn_to_ready_ms": ready,
        "migrate_ms": migrate_ms,
        "migration_file_bytes": size,
        "migrate_status": status.1,
    }))
}

/// One QEMU restore from `file` running `echo hi`: (spawn to running per QMP, Outcome).
fn qemu_restore(
    vmlinux: &Path,
    initrd: &Path,
    work: &Path,
    file: &Path,
) -> Result<(f64, Outcome), String> {
    let sock = work.join("qmp-dst.sock");
    let _ = std::fs::remove_file(&sock);
    let mut args = qemu_linux_args(vmlinux, initrd, &sock);
    args.push("-incoming".into());
    args.push(format!("exec:cat {}", file.display()));
    let mut p = Proc::spawn(Command::new("qemu-system-x86_64").args(&args), true)
        .map_err(|e| format!("qemu: {e}"))?;
    let mut stdin = p.stdin().ok_or("no stdin")?;
    let mut q = harness::qmp::Qmp::connect(&sock, Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = q.cmd("query-status", None)?;
        if r["status"] == "running" {
            break;
        }
        if r["status"] == "paused" {
            // Migrated, but not started (a source that was stopped): not expected here.
            return Err(format!("QEMU stayed paused after the migration: {r}"));
        }
        if Instant::now() > deadline {
            return Err(format!("QEMU did not run after the migration: {r}"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let running = ms(p.t0.elapsed());
    let line =
        vmm::command::encode(&["echo".to_string(), "hi".to_string()]).map_err(|e| e.to_string())?;
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("QEMU's console: {e}"))?;
    let o = p.finish(RUN_TIMEOUT);
    drop(stdin);
    Ok((running, o))
}

/// The first `busybox` on PATH if it is statically linked (an ELF without PT_INTERP).
fn static_busybox() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bb = std::env::split_paths(&path)
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .ok_or("no busybox on PATH (Debian: busybox-static)")?;
    let elf = std::fs::read(&bb).map_err(|e| format!("{}: {e}", bb.display()))?;
    let rd = |at: usize, n: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(elf.get(at..at + n)?);
        Some(u64::from_le_bytes(b))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err(format!("{} is not a 64-bit ELF", bb.display()));
    }
    let (phoff, phentsize, phnum) = (
        rd(0x20, 8).unwrap_or(0) as usize,
        rd(0x36, 2).unwrap_or(0) as usize,
        rd(0x38, 2).unwrap_or(0) as usize,
    );
    let dynamic = (0..phnum).any(|i| rd(phoff + i * phentsize, 4) == Some(3));
    if dynamic {
        return Err(format!("{} is dynamically linked", bb.display()));
    }
    Ok(bb)
}

/// A minimal OCI bundle running a static busybox `echo hi`; checks that runc runs it.
fn runc_bundle(work: &Path) -> Result<(PathBuf, String), String> {
    let version = Command::new("runc")
        .arg("--version")
        .output()
        .map_err(|e| format!("runc is not installed ({e}; Debian: apt-get install runc)"))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let bb = static_busybox()?;
    let bundle = work.join("runc-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(bundle.join("rootfs/bin")).map_err(|e| e.to_string())?;
    std::fs::copy(&bb, bundle.join("rootfs/bin/busybox")).map_err(|e| e.to_string())?;
    let spec = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .map_err(|e| e.to_string())?;
    if !spec.status.success() {
        return Err(format!(
            "runc spec: {}",
            String::from_utf8_lossy(&spec.stderr)
        ));
    }
    let cfg_path = bundle.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    cfg["process"]["terminal"] = json!(false);
    cfg["process"]["args"] = json!(["/bin/busybox", "echo", "hi"]);
    cfg["root"]["readonly"] = json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).map_err(|e| e.to_string())?;
    let o = runc_run(&bundle, 0)?;
    if o.code() != Some(0) || o.line_at(is_hi).is_none() {
        return Err(format!(
            "runc run failed here (status {:?}): {} {}",
            o.code(),
            tail(&o.stdout),
            tail(&o.stderr)
        ));
    }
    Ok((bundle, version))
}

fn runc_run(bundle: &Path, i: usize) -> Result<Outcome, String> {
    run(
        "runc",
        &[
            "run".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            format!("ember-bench-{}-{i}", std::process::id()),
        ],
        RUN_TIMEOUT,
    )
}

#[derive(Default)]
struct Series {
    to_hi: Vec<f64>,
    to_exit: Vec<f64>,
    failures: Vec<String>,
}

impl Series {
    fn add(&mut self, what: &str, o: &Outcome, ok_code: i32) {
        match (o.line_at(is_hi), o.exit_ms, o.code()) {
            (Some(hi), Some(exit), Some(c)) if c == ok_code => {
                self.to_hi.push(hi);
                self.to_exit.push(exit);
            }
            _ => {
                let msg = format!(
                    "{what}: status {:?}, stdout {:?}, stderr {}",
                    o.code(),
                    tail(&o.stdout),
                    tail(&o.stderr)
                );
                eprintln!("bench: {msg}");
                self.failures.push(msg);
            }
        }
    }
    fn json(&self) -> Value {
        json!({
            "spawn_to_hi_ms": stats_json(&self.to_hi),
            "spawn_to_exit_ms": stats_json(&self.to_exit),
            "failures": self.failures,
        })
    }
}

struct LinuxResults {
    json: Value,
    ember_restore: Series,
    qemu_restore: Series,
    runc: Series,
    cold: Series,
    notes: Vec<String>,
    snapshot_info: Option<(u64, u64, u64)>,
    qemu_file: Option<u64>,
    mem: CloneMem,
    clone_errors: Vec<String>,
}

fn linux_bench(work: &Path) -> LinuxResults {
    let n: usize = harness::env_or("EMBER_BENCH_LINUX_N", 5);
    let cold_n: usize = harness::env_or("EMBER_BENCH_COLD_N", 1);
    let (vmlinux, _) = harness::kernel();
    let initrd = harness::initramfs();
    let mut notes = Vec::new();
    let mut skipped = serde_json::Map::new();
    let (k, i) = (vmlinux.display().to_string(), initrd.display().to_string());
    let mem = format!("{GUEST_MIB}M");

    // Ember's snapshot at "ready".
    eprintln!("bench: snapshot, Linux: booting Ember to '{INIT_READY}' for the snapshot");
    let dir = work.join("linux");
    let snap = run(
        harness::ember_bin(),
        &[
            "--kernel".into(),
            k.clone(),
            "--initrd".into(),
            i.clone(),
            "--memory".into(),
            mem.clone(),
            "--snapshot".into(),
            dir.display().to_string(),
        ],
        BOOT_TIMEOUT,
    )
    .expect("ember");
    let snapshot_ok = snap.code() == Some(0);
    let desc: Value = std::fs::read_to_string(dir.join(vmm::snapshot::DESCRIPTION_FILE))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let state_bytes = std::fs::metadata(dir.join(vmm::snapshot::STATE_FILE)).map_or(0, |m| m.len());
    let mem_on_disk = allocated(&dir.join(vmm::snapshot::MEMORY_FILE));
    let snapshot_info = desc["memory_bytes_written"]
        .as_u64()
        .zip(desc["ram_bytes"].as_u64())
        .map(|(w, r)| (w, r, state_bytes));
    if !snapshot_ok {
        notes.push(format!(
            "Ember's Linux snapshot failed (status {:?}): {}",
            snap.code(),
            tail(&snap.stderr)
        ));
    }
    let ember_snapshot = json!({
        "exit_code": snap.code(),
        "spawn_to_ready_ms": snap.line_at(|l| l.contains(INIT_READY)),
        "spawn_to_exit_ms": snap.exit_ms,
        "memory_bytes_written": desc["memory_bytes_written"],
        "ram_bytes": desc["ram_bytes"],
        "memory_file_allocated_bytes": mem_on_disk,
        "state_bytes": state_bytes,
        "stderr": snap.stderr.trim(),
    });

    // QEMU's migration file.
    let qemu_file = work.join("qemu-migration");
    let mut qemu_snapshot_json = Value::Null;
    let qemu_ok = if std::env::var("EMBER_BENCH_NO_QEMU").is_ok() {
        skipped.insert("qemu".into(), json!("EMBER_BENCH_NO_QEMU"));
        false
    } else if harness::qemu_version().is_none() {
        let why = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
        notes.push(format!("QEMU skipped: {why}"));
        skipped.insert("qemu".into(), json!(why));
        false
    } else {
        eprintln!("bench: snapshot, Linux: booting QEMU to '{INIT_READY}' for its migration file");
        match qemu_snapshot(&vmlinux, &initrd, work, &qemu_file) {
            Ok(v) => {
                qemu_snapshot_json = v;
                true
            }
            Err(e) => {
                notes.push(format!("QEMU skipped: {e}"));
                skipped.insert("qemu".into(), json!(e));
                false
            }
        }
    };

    // runc.
    let mut runc_version = None;
    let bundle = if std::env::var("EMBER_BENCH_NO_RUNC").is_ok() {
        skipped.insert("runc".into(), json!("EMBER_BENCH_NO_RUNC"));
        None
    } else {
        match runc_bundle(work) {
            Ok((b, v)) => {
                runc_version = Some(v);
                Some(b)
            }
            Err(e) => {
                notes.push(format!("runc skipped: {e}"));
                skipped.insert("runc".into(), json!(e));
                None
            }
        }
    };

    // Interleaved restores.
    let (mut ember_restore, mut qemu_restore_s, mut runc) =
        (Series::default(), Series::default(), Series::default());
    let mut ember_first_run = Vec::new();
    let mut qemu_running = Vec::new();
    for r in 0..n {
        eprintln!("bench: snapshot, Linux restores {}/{n}", r + 1);
        if snapshot_ok {
            let o = run(
                harness::ember_bin(),
                &[
                    "--boot-timer".into(),
                    "--restore".into(),
                    dir.display().to_string(),
                    "--".into(),
                    "echo".into(),
                    "hi".into(),
                ],
                RUN_TIMEOUT,
            )
            .expect("ember");
            ember_restore.add("ember --restore", &o, 0);
            if let Some((_, at)) = harness::parse_phases(&o.stderr)
                .into_iter()
                .find(|(n, _)| n == "first KVM_RUN")
            {
                ember_first_run.push(at);
            }
        }
        if qemu_ok {
            match qemu_restore(&vmlinux, &initrd, work, &qemu_file) {
                // isa-debug-exit: status 0 exits QEMU with (0 << 1) | 1.
                Ok((running, o)) => {
                    qemu_running.push(running);
                    qemu_restore_s.add("qemu -incoming", &o, 1);
                }
                Err(e) => {
                    eprintln!("bench: QEMU restore: {e}");
                    qemu_restore_s.failures.push(e);
                }
            }
        }
        if let Some(b) = &bundle {
            match runc_run(b, r + 1) {
                Ok(o) => runc.add("runc run", &o, 0),
                Err(e) => runc.failures.push(e),
            }
        }
    }

    // Memory per Linux clone.
    let (linux_mem, linux_mem_json, linux_clone_errors) = if snapshot_ok {
        let cmd: Vec<String> = ["sh", "-c", "echo clone-up; exec sleep 100000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        clone_memory(
            &dir,
            &count_list("EMBER_BENCH_LINUX_CLONES", "1,10"),
            Some(&cmd),
        )
    } else {
        Default::default()
    };

    // Cold boots with the command.
    let mut cold = Series::default();
    for r in 0..cold_n {
        eprintln!("bench: snapshot, Linux cold boot {}/{cold_n}", r + 1);
        let o = run(
            harness::ember_bin(),
            &[
                "--kernel".into(),
                k.clone(),
                "--initrd".into(),
                i.clone(),
                "--memory".into(),
                mem.clone(),
                "--".into(),
                "echo".into(),
                "hi".into(),
            ],
            BOOT_TIMEOUT,
        )
        .expect("ember");
        cold.add("ember cold boot", &o, 0);
    }

    let qemu_size = qemu_snapshot_json["migration_file_bytes"].as_u64();
    let json = json!({
        "kernel": vmlinux,
        "initramfs": initrd,
        "memory_mib": GUEST_MIB,
        "command": ["echo", "hi"],
        "restores_per_contender": n,
        "ember_snapshot": ember_snapshot,
        "ember_restore": {
            "series": ember_restore.json(),
            "process_start_to_first_run_ms": stats_json(&ember_first_run),
        },
        "ember_cold_boot": cold.json(),
        "qemu": {
            "version": harness::qemu_version(),
            "cmdline": format!("{} {}", harness::guest_cmdline(), vmm::command::WAIT_PARAM),
            "snapshot": qemu_snapshot_json,
            "restore": qemu_restore_s.json(),
            "spawn_to_running_ms": stats_json(&qemu_running),
            "note": "the command line is typed on the serial console after QMP query-status says running (polled every 0.5 ms)",
        },
        "runc": {"version": runc_version, "series": runc.json()},
        "memory_per_clone": {
            "method": MEM_METHOD,
            "command": "sh -c 'echo clone-up; exec sleep 100000'",
            "counts": linux_mem_json,
            "errors": linux_clone_errors,
        },
        "skipped": skipped,
        "notes": notes,
    });
    LinuxResults {
        json,
        ember_restore,
        qemu_restore: qemu_restore_s,
        runc,
        cold,
        notes,
        snapshot_info,
        qemu_file: qemu_size,
        mem: linux_mem,
        clone_errors: linux_clone_errors,
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let s = harness::stats(v);
    format!("{:.3} [{:.3}, {:.3}] n={}", s.median, s.min, s.max, s.n)
}

type Row<'a> = (String, String, &'a str);

fn mem_rows(rows: &mut Vec<Row<'_>>, who: &str, mem: &CloneMem, errors: &[String]) {
    let f = |m: &Mem| {
        format!(
            "Rss {} Pss {} private {} shared {}",
            m.rss, m.pss, m.private, m.shared
        )
    };
    for (n, g, p) in mem {
        rows.push((
            format!("{who}: per clone, {n} alive: guest RAM"),
            f(g),
            "KiB",
        ));
        rows.push((format!("{who}: per clone, {n} alive: process"), f(p), "KiB"));
    }
    for e in errors {
        rows.push((format!("{who}: clones stopped"), e.clone(), ""));
    }
}

fn table(t: &TinyResults, l: Option<&LinuxResults>) -> String {
    let mut rows: Vec<Row<'_>> = vec![
        (
            "tiny: pause() of a running guest".into(),
            cell(&t.pause),
            "ms",
        ),
        (
            "tiny: snapshot() of the paused guest".into(),
            cell(&t.snapshot),
            "ms",
        ),
    ];
    if let Some(i) = t.info {
        rows.push((
            "tiny: snapshot memory written / RAM".into(),
            format!(
                "{} KiB / {} MiB ({} KiB on disk, state {} B)",
                i.memory_bytes_written >> 10,
                i.ram_bytes >> 20,
                t.mem_file_on_disk >> 10,
                i.state_bytes
            ),
            "",
        ));
    }
    rows.push((
        "tiny: Vm::restore start to first KVM_RUN".into(),
        cell(&t.to_first_run),
        "ms",
    ));
    rows.push(("tiny: Vm::restore call".into(), cell(&t.restore_call), "ms"));
    rows.push((
        "tiny: ember --restore spawn to first byte".into(),
        cell(&t.cli_first_byte),
        "ms",
    ));
    rows.push((
        "tiny: ember --restore spawn to exit".into(),
        cell(&t.cli_exit),
        "ms",
    ));
    for (n, r) in &t.clones_per_s {
        rows.push((
            format!("tiny: clones/s (restore+kill), {n} thread(s)"),
            format!("{r:.1}"),
            "1/s",
        ));
    }
    mem_rows(&mut rows, "tiny", &t.mem, &t.clone_errors);
    if let Some(l) = l {
        if let Some((w, r, s)) = l.snapshot_info {
            rows.push((
                "Linux: snapshot memory written / RAM".into(),
                format!("{} MiB / {} MiB (state {} KiB)", w >> 20, r >> 20, s >> 10),
                "",
            ));
        }
        if let Some(q) = l.qemu_file {
            rows.push((
                "Linux: QEMU migration file".into(),
                format!("{} MiB", q >> 20),
                "",
            ));
        }
        for (name, s) in [
            ("ember --restore -- echo hi", &l.ember_restore),
            ("qemu -incoming + echo hi", &l.qemu_restore),
            ("runc run busybox echo hi", &l.runc),
            ("ember cold boot -- echo hi", &l.cold),
        ] {
            rows.push((format!("Linux: {name}: spawn to hi"), cell(&s.to_hi), "ms"));
            rows.push((
                format!("Linux: {name}: spawn to exit"),
                cell(&s.to_exit),
                "ms",
            ));
        }
        mem_rows(&mut rows, "Linux", &l.mem, &l.clone_errors);
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let v = rows.iter().map(|r| r.1.len()).max().unwrap_or(10);
    let mut out = format!(
        "| {:<w$} | {:<v$} | unit |\n|{}|{}|------|\n",
        "figure",
        "median [min, max] n / value",
        "-".repeat(w + 2),
        "-".repeat(v + 2)
    );
    for (name, val, unit) in rows {
        out.push_str(&format!("| {name:<w$} | {val:<v$} | {unit:<4} |\n"));
    }
    if let Some(l) = l {
        let m = |s: &Series| harness::median(&s.to_hi);
        out.push('\n');
        out.push_str(&harness::header());
        out.push('\n');
        out.push_str(&harness::row(
            "restore, spawn to hi (median)",
            m(&l.ember_restore),
            m(&l.qemu_restore),
            "ms",
        ));
        out.push('\n');
        out.push_str(&harness::row(
            "restore, spawn to exit (median)",
            harness::median(&l.ember_restore.to_exit),
            harness::median(&l.qemu_restore.to_exit),
            "ms",
        ));
        out.push('\n');
        for n in &l.notes {
            out.push_str(&format!("\nnote: {n}"));
        }
    }
    out
}

/// A plot panel's series.
type Dots<'a> = Vec<(&'a str, &'a [f64])>;

fn main() {
    if !harness::bench_requested("snapshot") {
        return;
    }
    let rounds: usize = harness::env_or("EMBER_BENCH_ROUNDS", 10);
    let tiny = harness::build_guest("tiny", "tiny.ld");
    let work = harness::out_dir().join(format!("snapshot-work-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work directory");

    let t = tiny_bench(&tiny, &work, rounds);
    let l = if std::env::var("EMBER_BENCH_NO_LINUX").is_ok() {
        None
    } else {
        Some(linux_bench(&work))
    };

    let v = json!({
        "benchmark": "snapshot",
        "pvm": harness::host_is_pvm(),
        "tiny": t.json,
        "linux": l.as_ref().map(|l| &l.json),
    });
    let json_path = harness::write_json("snapshot", &v);

    let rates: Vec<f64> = t.clones_per_s.iter().map(|(_, r)| *r).collect();
    let rate_names: Vec<String> = t
        .clones_per_s
        .iter()
        .map(|(n, _)| format!("{n} thr"))
        .collect();
    let mem_pss: Vec<Vec<f64>> = t.mem.iter().map(|(_, _, p)| vec![p.pss as f64]).collect();
    let mem_names: Vec<String> = t.mem.iter().map(|(n, _, _)| format!("{n}")).collect();
    let p1: Vec<(&str, &[f64])> = vec![("pause", &t.pause), ("snapshot", &t.snapshot)];
    let p2: Vec<(&str, &[f64])> = vec![
        ("lib first_run", &t.to_first_run),
        ("lib call", &t.restore_call),
        ("CLI 1st byte", &t.cli_first_byte),
    ];
    let p3: Vec<(&str, &[f64])> = rate_names
        .iter()
        .map(|n| n.as_str())
        .zip(rates.chunks(1))
        .collect();
    let p4: Vec<(&str, &[f64])> = mem_names
        .iter()
        .map(|s| s.as_str())
        .zip(mem_pss.iter().map(|v| v.as_slice()))
        .collect();
    let mut panels: Vec<harness::Panel<'_>> = vec![
        ("tiny: pause, snapshot", "ms", &p1),
        ("tiny: restore", "ms", &p2),
        ("tiny: clones per second", "1/s", &p3),
        ("tiny: process PSS per clone", "KiB", &p4),
    ];
    let (p5, p6): (Dots<'_>, Dots<'_>) = match &l {
        Some(l) => (
            vec![
                ("Ember", &l.ember_restore.to_hi),
                ("QEMU", &l.qemu_restore.to_hi),
                ("runc", &l.runc.to_hi),
            ],
            vec![
                ("Ember", &l.ember_restore.to_exit),
                ("QEMU", &l.qemu_restore.to_exit),
                ("runc", &l.runc.to_exit),
            ],
        ),
        None => (Vec::new(), Vec::new()),
    };
    if l.is_some() {
        panels.push(("Linux restore: spawn to hi", "ms", &p5));
        panels.push(("Linux restore: spawn to exit", "ms", &p6));
    }
    let svg = harness::plot_panels("snapshot", &panels);
    println!(
        "{}\nJSON: {}\nplot: {}",
        table(&t, l.as_ref()),
        json_path.display(),
        svg.display()
    );
    let _ = std::fs::remove_dir_all(&work);
}
