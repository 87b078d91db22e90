//! A plain HTTP/1.1 client over a Unix socket, written by hand for the API tests (one
//! connection per request, `Content-Length` bodies), and `ember --api-sock` as a child whose
//! console (stdout) and stderr are collected as they come.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `raw` on a new connection and returns everything read until the server closes or a
/// whole response has arrived.
pub fn exchange(sock: &Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    s.write_all(raw).expect("send");
    read_response(&mut s)
}

/// Reads one response (headers, then `Content-Length` bytes), or up to end of stream.
pub fn read_response(s: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got[..end + 4 + len]).into_owned();
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request's bytes.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    match body {
        Some(b) => r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

/// The status code and body of a response.
pub fn parse(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `ember --api-sock` (or any `ember` arguments) as a child.
pub struct Ember {
    child: Child,
    /// The API socket.
    pub sock: PathBuf,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().expect("buffer").extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Ember {
    /// Spawns `ember --api-sock <dir>/<name>` with `extra` arguments and waits until the
    /// socket accepts connections.
    pub fn spawn(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let sock = dir.join(name);
        let mut cmd = Command::new(super::ember_bin());
        cmd.arg("--api-sock").arg(&sock).args(extra);
        let e = Self::spawn_command(cmd, sock);
        e.wait_for_socket();
        e
    }

    /// Spawns `ember args...` (no socket to wait for).
    pub fn spawn_args(args: &[&str]) -> Self {
        let mut cmd = Command::new(super::ember_bin());
        cmd.args(args);
        Self::spawn_command(cmd, PathBuf::new())
    }

    fn spawn_command(mut cmd: Command, sock: PathBuf) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ember");
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            sock,
            out,
            err,
        }
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "the API socket never accepted; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request on a new connection: status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        parse(&exchange(&self.sock, &request_bytes(method, path, body)))
    }

    /// A request that must succeed with 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, text) = self.request(method, path, Some(body));
        assert_eq!(
            status,
            204,
            "{method} {path} {body}: {text}\nstderr: {}",
            self.stderr()
        );
    }

    /// A request that must fail with 400: its fault message.
    pub fn fault(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (status, text) = self.request(method, path, body);
        assert_eq!(status, 400, "{method} {path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON fault");
        v["fault_message"]
            .as_str()
            .expect("fault_message")
            .to_string()
    }

    /// `GET /` state.
    pub fn state(&self) -> String {
        let (status, body) = self.request("GET", "/", None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["state"].as_str().expect("state").to_string()
    }

    /// The console so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("out")).into_owned()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("err")).into_owned()
    }

    /// Waits until `needle` is on the console.
    pub fn wait_for_console(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stdout().contains(needle) {
            if let Ok(Some(s)) = self.child_status() {
                panic!(
                    "ember ended ({s}) before {needle:?} appeared; console:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; console:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_status(&self) -> std::io::Result<Option<ExitStatus>> {
        // SAFETY: waitpid with WNOHANG|WNOWAIT on our own child: it is not reaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer; the pid is our child's.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: waitid filled `info`; si_pid is 0 when the child has not ended.
        if unsafe { info.si_pid() } == 0 {
            return Ok(None);
        }
        use std::os::unix::process::ExitStatusExt;
        // SAFETY: as above.
        Ok(Some(ExitStatus::from_raw(unsafe { info.si_status() } << 8)))
    }

    /// Waits for the process to end.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let status = super::wait_within(&mut self.child, timeout);
        // Let the readers take the last bytes.
        std::thread::sleep(Duration::from_millis(100));
        status
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
