//! `cargo bench --bench api`: the Firecracker-compatible API against the CLI, same binary,
//! interleaved run by run.
//!
//! - Socket readiness: spawn of `ember --api-sock` to the socket accepting a connection, and to
//!   the answer of the first request (`GET /version`), as a client library waits for it.
//! - Tiny guest (`action=exit:0`), the VMM path alone: API (spawn, wait for the socket, `PUT
//!   /boot-source`, `PUT /machine-config`, `InstanceStart`) spawn to exit, against
//!   `ember --kernel tiny` spawn to exit.
//! - Linux (the project's kernel and initramfs, command `true`): `InstanceStart` (sent) to the
//!   guest's boot-timer signal (Ember's `--boot-timer` line for the API mode) and to the init's
//!   `ember-init: ready` console line; beside them the CLI's spawn to the boot-timer signal
//!   and to the ready line.
//!
//! Environment: `EMBER_BENCH_N` (Linux boots per mode, default 3), `EMBER_BENCH_TINY_N`
//! (socket and tiny-guest runs per mode, default 30). Results: a table on stdout and
//! target/ember-bench/api.json.

#[path = "harness/mod.rs"]
mod harness;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const LINUX_TIMEOUT: Duration = Duration::from_secs(900);
const READY: &str = "ember-init: ready";

/// A child with its stdout lines timestamped (since spawn) and its stderr kept.
struct Proc {
    child: Child,
    spawned: Instant,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
    stderr: Arc<Mutex<String>>,
}

fn spawn(args: &[String]) -> Proc {
    let spawned = Instant::now();
    let mut child = Command::new(harness::ember_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (l, mut out) = (lines.clone(), child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let at = spawned.elapsed().as_secs_f64() * 1e3;
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(&pending[..i])
                    .trim_end()
                    .to_string();
                l.lock().expect("lines").push((at, line));
                pending.drain(..=i);
            }
        }
    });
    let (e, mut err) = (stderr.clone(), child.stderr.take().expect("stderr"));
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        e.lock().expect("stderr").push_str(&s);
    });
    Proc {
        child,
        spawned,
        lines,
        stderr,
    }
}

impl Proc {
    fn ms(&self) -> f64 {
        self.spawned.elapsed().as_secs_f64() * 1e3
    }

    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn line_at(&self, needle: &str) -> Option<f64> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }
}

/// One request on a new connection; the status code.
fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> u16 {
    let mut s = UnixStream::connect(sock).expect("connect");
    let raw = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
    };
    s.write_all(raw.as_bytes()).expect("send");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "the socket never accepted");
        std::hint::spin_loop();
    }
}

fn sock_path(dir: &Path, i: usize) -> PathBuf {
    let p = dir.join(format!("b{i}.sock"));
    let _ = std::fs::remove_file(&p);
    p
}

/// Spawn to accepting, and to the first answer.
fn socket_ready(dir: &Path, i: usize) -> (f64, f64) {
    let sock = sock_path(dir, i);
    let mut p = spawn(&["--api-sock".into(), sock.display().to_string()]);
    wait_for_socket(&sock);
    let accepting = p.ms();
    assert_eq!(request(&sock, "GET", "/version", None), 200);
    let answered = p.ms();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
    p.wait(Duration::from_secs(10));
    (accepting, answered)
}

/// The API path for a VM: configure and start; returns the process and when InstanceStart
/// was sent (ms since spawn).
fn api_start(
    dir: &Path,
    i: usize,
    kernel: &Path,
    initrd: Option<&Path>,
    args: &str,
    mib: u64,
    extra: &[&str],
) -> (Proc, f64) {
    let sock = sock_path(dir, i);
    let mut a = vec!["--api-sock".to_string(), sock.display().to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    let p = spawn(&a);
    wait_for_socket(&sock);
    let initrd = initrd.map_or(String::new(), |i| {
        format!(r#", "initrd_path": "{}""#, i.display())
    });
    let boot = format!(
        r#"{{"kernel_image_path": "{}"{initrd}, "boot_args": "{args}"}}"#,
        kernel.display()
    );
    assert_eq!(request(&sock, "PUT", "/boot-source", Some(&boot)), 204);
    let mc = format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mib}}}"#);
    assert_eq!(request(&sock, "PUT", "/machine-config", Some(&mc)), 204);
    let sent = p.ms();
    assert_eq!(
        request(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        ),
        204
    );
    (p, sent)
}

fn boot_timer_line(stderr: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        l.trim()
            .strip_prefix("ember:   InstanceStart to boot-timer signal:")?
            .trim()
            .strip_suffix("ms")?
            .trim()
            .parse()
            .ok()
    })
}

fn phase(stderr: &str, name: &str) -> Option<f64> {
    harness::parse_phases(stderr)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
}

fn med(v: &[f64]) -> Option<f64> {
    harness::median(v)
}

fn main() {
    if !harness::bench_requested("api") {
        return;
    }
    let n_linux: usize = harness::env_or("EMBER_BENCH_N", 3);
    let n_tiny: usize = harness::env_or("EMBER_BENCH_TINY_N", 30);
    let dir = std::env::temp_dir().join(format!("ember-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tiny = harness::build_guest("tiny", "tiny.ld");

    let (mut accepting, mut answered, mut tiny_api, mut tiny_cli) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..n_tiny {
        let (a, b) = socket_ready(&dir, i);
        accepting.push(a);
        answered.push(b);
        let (mut p, _) = api_start(&dir, i, &tiny, None, "action=exit:0", 64, &[]);
        assert_eq!(
            p.wait(Duration::from_secs(60)),
            Some(0),
            "{}",
            p.stderr.lock().expect("e")
        );
        tiny_api.push(p.ms());
        let mut c = spawn(&[
            "--kernel".into(),
            tiny.display().to_string(),
            "--memory".into(),
            "64M".into(),
            "--cmdline".into(),
            "action=exit:0".into(),
        ]);
        assert_eq!(c.wait(Duration::from_secs(60)), Some(0));
        tiny_cli.push(c.ms());
    }

    let (vmlinux, _) = harness::kernel();
    let initrd = harness::initramfs();
    let cmd = vmm::command::encode(&["true".to_string()]).expect("encodable");
    let args = format!("{} {cmd}", vmm::DEFAULT_CMDLINE);
    let (mut api_timer, mut api_ready, mut cli_timer, mut cli_ready) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..n_linux {
        eprintln!("bench: Linux boot {}/{n_linux} (API)", i + 1);
        let (mut p, sent) = api_start(
            &dir,
            1000 + i,
            &vmlinux,
            Some(&initrd),
            &args,
            256,
            &["--boot-timer"],
        );
        let code = p.wait(LINUX_TIMEOUT);
        let stderr = p.stderr.lock().expect("stderr").clone();
        assert_eq!(code, Some(0), "{stderr}");
        api_timer.extend(boot_timer_line(&stderr));
        api_ready.extend(p.line_at(READY).map(|t| t - sent));
        eprintln!("bench: Linux boot {}/{n_linux} (CLI)", i + 1);
        let mut c = spawn(&[
            "--kernel".into(),
            vmlinux.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--memory".into(),
            "256M".into(),
            "--boot-timer".into(),
            "--".into(),
            "true".into(),
        ]);
        assert_eq!(c.wait(LINUX_TIMEOUT), Some(0));
        let stderr = c.stderr.lock().expect("stderr").clone();
        cli_timer.extend(phase(&stderr, "boot-timer signal"));
        cli_ready.extend(c.line_at(READY));
    }
    let _ = std::fs::remove_dir_all(&dir);

    let s = |v: &[f64]| harness::stats(v).json();
    let v = json!({
        "socket": {"spawn_to_accepting_ms": s(&accepting), "spawn_to_first_answer_ms": s(&answered)},
        "tiny": {"api_spawn_to_exit_ms": s(&tiny_api), "cli_spawn_to_exit_ms": s(&tiny_cli)},
        "linux": {
            "api_instance_start_to_boot_timer_ms": s(&api_timer),
            "api_instance_start_to_ready_ms": s(&api_ready),
            "cli_spawn_to_boot_timer_ms": s(&cli_timer),
            "cli_spawn_to_ready_ms": s(&cli_ready),
        },
        "host_is_pvm": harness::host_is_pvm(),
    });
    let json_path = harness::write_json("api", &v);
    let f = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
    println!("| figure (median, ms)                                   |       API |       CLI |");
    println!("|-------------------------------------------------------|-----------|-----------|");
    println!(
        "| spawn to socket accepting                             | {:>9} |         - |",
        f(med(&accepting))
    );
    println!(
        "| spawn to first answer (GET /version)                  | {:>9} |         - |",
        f(med(&answered))
    );
    println!(
        "| tiny guest: spawn to exit (API: configure + start)    | {:>9} | {:>9} |",
        f(med(&tiny_api)),
        f(med(&tiny_cli))
    );
    println!(
        "| Linux: InstanceStart (API) / spawn (CLI) to boot timer | {:>9} | {:>9} |",
        f(med(&api_timer)),
        f(med(&cli_timer))
    );
    println!(
        "| Linux: InstanceStart (API) / spawn (CLI) to ready line | {:>9} | {:>9} |",
        f(med(&api_ready)),
        f(med(&cli_ready))
    );
    println!("\nJSON: {}", json_path.display());
}
