//! A VMM run by a benchmark, its console (stdout) read line by line as it comes, each line
//! stamped with when it was read; killed when dropped.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running VMM: each console (stdout) line is stamped with when it was read.
pub struct ConsoleVm {
    /// The VMM process.
    pub child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr: Option<JoinHandle<String>>,
}

impl ConsoleVm {
    /// Spawns `cmd` with its stdout (the guest's console) read line by line.
    pub fn spawn(cmd: &mut Command) -> Result<ConsoleVm, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut partial = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let at = Instant::now();
                partial.extend_from_slice(&buf[..n]);
                while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    sink.lock().expect("console lines").push((at, text));
                }
            }
            if !partial.is_empty() {
                let text = String::from_utf8_lossy(&partial).trim_end().to_string();
                sink.lock()
                    .expect("console lines")
                    .push((Instant::now(), text));
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(ConsoleVm {
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    /// The first console line satisfying `pred`, and when it was read.
    pub fn find(&self, pred: &impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        self.lines
            .lock()
            .expect("console lines")
            .iter()
            .find(|(_, l)| pred(l))
            .cloned()
    }

    /// The first console line satisfying `pred` and when it was read; None if the VMM ends
    /// or `timeout` passes first.
    pub fn wait_line(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self.find(&pred) {
                return Some(hit);
            }
            if Instant::now() >= deadline || !matches!(self.child.try_wait(), Ok(None)) {
                // What came with the end.
                std::thread::sleep(Duration::from_millis(200));
                return self.find(&pred);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("console lines");
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM and waits up to `grace` for the VMM to end (then kills it); returns its
    /// stderr, with what the VMM printed as it ended.
    pub fn terminate(mut self, grace: Duration) -> String {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our child's pid, which try_wait has just found not reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop()
    }

    /// Kills the VMM; returns its stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ConsoleVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
