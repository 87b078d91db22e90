//! Spawning a program (Ember, QEMU) with a timeout: its stdout is read as it comes, each
//! line stamped with when it was read, optionally timed to a marker or ended at a line, and
//! everything it printed is kept.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Called on the stdout reader thread, with the child's pid, right after the marker was read.
type OnMarker = Box<dyn FnOnce(u32) + Send>;

/// How long a program ended by [`Spawn::end_at`] gets to finish what it prints.
const END_GRACE: Duration = Duration::from_millis(200);

/// A program to run, time and capture: [`Spawn::new`], the setters, then [`Spawn::run`].
pub struct Spawn {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    marker: Option<String>,
    on_marker: Option<OnMarker>,
    end: Option<String>,
    poll: Duration,
}

/// What one run of a program did.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None if killed after the timeout or by [`Spawn::end_at`]).
    pub status: Option<ExitStatus>,
    /// Everything on stdout.
    pub stdout: String,
    /// Each stdout line (the console) with when it was read (ms since spawn; the time of the
    /// read that brought its newline), without its line ending; an unterminated last line is
    /// stamped at the end of the output.
    pub lines: Vec<(f64, String)>,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time from spawn until exit (or until killed).
    pub elapsed: Duration,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Whether it was killed after the [`Spawn::end_at`] line.
    pub ended_at_line: bool,
    /// Spawn to the first appearance of the [`Spawn::marker`] on stdout.
    pub marker_at: Option<Duration>,
}

impl Run {
    /// The exit code, or -1 when killed by a signal or the timeout.
    pub fn code(&self) -> i32 {
        self.status.and_then(|s| s.code()).unwrap_or(-1)
    }

    /// When the first stdout line containing `needle` was read (ms since spawn).
    pub fn line_at(&self, needle: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }
}

/// Whether `needle` ends within the last `fresh` bytes of `all` (the bytes just read).
fn arrived(all: &[u8], fresh: usize, needle: &str) -> bool {
    let window = &all[all.len().saturating_sub(fresh + needle.len())..];
    window.windows(needle.len()).any(|w| w == needle.as_bytes())
}

impl Spawn {
    /// `program` with no arguments, stdin from /dev/null, its exit checked every 2 ms.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            marker: None,
            on_marker: None,
            end: None,
            poll: Duration::from_millis(2),
        }
    }

    /// Adds arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Gives the program `input` on a pipe, closed after it (instead of /dev/null).
    pub fn stdin(mut self, input: &[u8]) -> Self {
        self.stdin = Some(input.to_vec());
        self
    }

    /// Times spawn to the first appearance of `marker` on stdout ([`Run::marker_at`]).
    pub fn marker(mut self, marker: &str) -> Self {
        self.marker = Some(marker.to_string());
        self
    }

    /// Calls `f` with the program's pid right when the [`Self::marker`] is read, while the
    /// program still runs (to sample its memory at that moment, say).
    pub fn on_marker(mut self, f: impl FnOnce(u32) + Send + 'static) -> Self {
        self.on_marker = Some(Box::new(f));
        self
    }

    /// Kills the program 200 ms after `line` appears on stdout (for a VMM that cannot end the
    /// VM by itself there); [`Run::ended_at_line`] then says so.
    pub fn end_at(mut self, line: &str) -> Self {
        self.end = Some(line.to_string());
        self
    }

    /// How often to check whether the program has exited: the resolution of
    /// [`Run::elapsed`] (default 2 ms).
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Spawns the program and waits for it to end, killing it after `timeout`.
    pub fn run(self, timeout: Duration) -> Run {
        let start = Instant::now();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.to_string_lossy()));
        let pid = child.id();
        let writer = self.stdin.map(|data| {
            let mut input = child.stdin.take().expect("stdin is piped");
            std::thread::spawn(move || {
                let _ = input.write_all(&data);
            })
        });
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let (marker_tx, marker_rx) = mpsc::channel();
        let (end_tx, end_rx) = mpsc::channel::<()>();
        let (marker, mut on_marker, end) = (self.marker, self.on_marker, self.end);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut lines = Vec::new();
            let mut line_start = 0;
            let mut buf = [0u8; 4096];
            let mut seen = false;
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let read_at = start.elapsed().as_secs_f64() * 1e3;
                        all.extend_from_slice(&buf[..n]);
                        while let Some(nl) = all[line_start..].iter().position(|&b| b == b'\n') {
                            let line = String::from_utf8_lossy(&all[line_start..line_start + nl]);
                            lines.push((read_at, line.trim_end_matches('\r').to_string()));
                            line_start += nl + 1;
                        }
                        if end.as_deref().is_some_and(|e| arrived(&all, n, e)) {
                            let _ = end_tx.send(());
                        }
                        if !seen && marker.as_deref().is_some_and(|m| arrived(&all, n, m)) {
                            seen = true;
                            let at = start.elapsed();
                            if let Some(f) = on_marker.take() {
                                f(pid);
                            }
                            let _ = marker_tx.send(at);
                        }
                    }
                }
            }
            if line_start < all.len() {
                let at = start.elapsed().as_secs_f64() * 1e3;
                lines.push((at, String::from_utf8_lossy(&all[line_start..]).into_owned()));
            }
            (all, lines)
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let (mut timed_out, mut ended_at_line) = (false, false);
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if end_rx.try_recv().is_ok() {
                std::thread::sleep(END_GRACE);
                ended_at_line = true;
            } else if start.elapsed() > timeout {
                timed_out = true;
            }
            if ended_at_line || timed_out {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(self.poll);
        };
        let elapsed = start.elapsed();
        if let Some(w) = writer {
            let _ = w.join();
        }
        let (all, lines) = reader.join().expect("stdout reader");
        let stderr = err_reader.join().expect("stderr reader");
        Run {
            status,
            stdout: String::from_utf8_lossy(&all).into_owned(),
            lines,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed,
            timed_out,
            ended_at_line,
            marker_at: marker_rx.try_recv().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn stdin_environment_and_status_reach_the_program_and_its_output_comes_back() {
        let r = Spawn::new("sh")
            .args(["-c", "cat; echo \"$GREETING\" >&2; exit 3"])
            .env("GREETING", "hello")
            .stdin(b"one\ntwo\r\nthree")
            .run(T);
        assert_eq!(r.code(), 3);
        assert!(!r.timed_out && !r.ended_at_line);
        assert_eq!(r.stdout, "one\ntwo\r\nthree");
        let lines: Vec<&str> = r.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["one", "two", "three"]);
        assert_eq!(r.stderr, "hello\n");
        assert!(r.line_at("two").is_some() && r.line_at("four").is_none());
        assert_eq!(r.marker_at, None);
    }

    #[test]
    fn the_timeout_kills_the_program() {
        let r = Spawn::new("sleep")
            .args(["30"])
            .run(Duration::from_millis(100));
        assert!(r.timed_out);
        assert_eq!((r.status, r.code()), (None, -1));
        assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
    }

    #[test]
    fn the_marker_is_timed_and_reported_while_the_program_runs_and_the_end_line_ends_it() {
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        let r = Spawn::new("sh")
            .args([
                "-c",
                "echo booting; sleep 0.1; echo ready; echo done; exec sleep 30",
            ])
            .marker("ready")
            .on_marker(move |pid| {
                let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
                s.store(if alive { pid } else { u32::MAX }, Ordering::SeqCst);
            })
            .end_at("done")
            .run(T);
        assert!(r.ended_at_line && !r.timed_out && r.status.is_none());
        let at = r.marker_at.expect("marker seen");
        assert!(
            at >= Duration::from_millis(100) && at <= r.elapsed,
            "{at:?}"
        );
        let pid = seen.load(Ordering::SeqCst);
        assert!(pid != 0 && pid != u32::MAX, "on_marker: {pid}");
        assert!(r.line_at("booting") < r.line_at("ready"));
        assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);
    }
}
