//! Host-side fixtures shared by the network and vsock tests and benchmarks: a private network
//! namespace with a TAP (root), entering it from one thread, and the client side of the vsock
//! device's Firecracker protocol.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A network namespace with `tap0` at `HOST_CIDR`, up; deleted when dropped.
pub struct Netns(pub String);

/// The address `tap0` has on the host side.
pub const HOST_CIDR: &str = "172.30.77.1/24";

/// Runs `args` and fails with its stderr unless it succeeds.
pub fn run_ok(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates `ember-<tag>-<pid>` with `tap0` in it (root needed).
    pub fn create(tag: &str) -> Result<Self, String> {
        let ns = Netns(format!("ember-{tag}-{}", std::process::id()));
        run_ok(&["ip", "netns", "add", &ns.0])?;
        run_ok(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        run_ok(&[
            "ip", "-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap",
        ])?;
        run_ok(&["ip", "-n", &ns.0, "addr", "add", HOST_CIDR, "dev", "tap0"])?;
        run_ok(&["ip", "-n", &ns.0, "link", "set", "tap0", "up"])?;
        Ok(ns)
    }
}

/// Moves the calling thread (only) into the network namespace `name`.
pub fn enter_netns(name: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| format!("namespace {name}: {e}"))?;
    // SAFETY: setns on the calling thread only, with a namespace descriptor it holds open.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("setns: {}", std::io::Error::last_os_error()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Connects through the vsock device's socket `sock` to guest `port` (Firecracker's
/// `CONNECT <port>` / `OK <host port>`); returns the stream and the host port. The `OK` line
/// is read byte by byte: nothing after it may be swallowed.
pub fn vsock_connect(
    sock: &Path,
    port: u32,
    timeout: Duration,
) -> Result<(UnixStream, u32), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("read OK: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let host_port = line
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("not an OK line: {line:?}"))?;
    Ok((s, host_port))
}
