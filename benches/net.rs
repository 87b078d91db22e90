//! `cargo bench --bench net`: virtio-net figures measured between a Linux guest and a private
//! network namespace, Ember's virtio-net against QEMU microvm's `virtio-net-device`, on the
//! same TAP, kernel, initramfs and command line, interleaved (the order alternates each round).
//!
//! Needs root (a network namespace with a TAP device); without it the bench prints a SKIPPED
//! line and ends. The setup is tests/net.rs's: one namespace for the whole run, `tap0` in it at
//! 172.30.77.1/24, the guest at 172.30.77.2 with the same MAC under both VMMs (configured by the
//! guest kernel's `ip=`), each VMM started with `ip netns exec` and given `tap0` in turn.
//! Nothing leaves the machine.
//!
//! Per run (one boot), the guest's command (the project's initramfs) does three transfers of
//! `EMBER_BENCH_NET_MIB` MiB against servers this process runs in the namespace (a thread
//! enters it with `setns`), then prints a marker and sleeps:
//! - echo: `xfer check tcp` sends the test pattern to an echo server and checks what comes
//!   back; MiB/s of both directions counted (2 N bytes), from the server's accept to the
//!   console line `xfer: check ok`;
//! - guest to host, send only: the same `xfer check` against a server that reads everything
//!   and closes without echoing (`xfer` then says `short ok 0 bytes`); from the accept to the
//!   end of the guest's data, as the server sees it;
//! - host to guest, receive only: busybox `wget -O /dev/null` from a minimal HTTP server;
//!   from the request to the guest closing the connection. `xfer` has no one-way mode, and
//!   busybox reads in 4 KiB pieces (a guest system call each), so this figure is a floor.
//!
//! After them the guest prints its NIC's `/proc/interrupts` line: interrupts taken from boot
//! to the end of the transfers (each costs emulated guest-kernel work here), shown beside the
//! throughput to explain it. The vCPU's exits, as KVM counts them, from the spawn to the end of
//! the pings, are read under both VMMs: Ember prints its count under `--boot-timer` when
//! stopped (`--stop-grace 0`, so no shutdown is counted), QEMU answers QMP's `query-stats`
//! just before it is killed. Both include the boot (QEMU's its qboot firmware too) and grow
//! with the run's length (timer exits), so they compare what each VMM makes the same guest
//! work exit for only roughly; a run that failed in part has none.
//!
//! Then, from the namespace, ICMP echo requests to the guest at 5/s and at 100/s (ping(8)'s
//! packets, sent by this process over a raw socket): round trip min, median and p99 (the
//! sample at rank `round((n - 1) * 0.99)`: the largest below 100 pings) and loss, after three
//! warm-up pings. The guest is idle then (it sleeps); its kernel answers ICMP with no user
//! space. Loss counts requests never answered: replies are awaited up to a minute after the
//! last request, so a guest slower than the ping rate shows in the round trips, not as loss.
//!
//! Goals (printed, not checked): throughput >= 1.0x QEMU, round trip <= 1.0x QEMU, no loss at
//! 100/s. Both VMMs' TAP backends carry the virtio-net header and offer the guest checksum
//! and segmentation offloads and mergeable receive buffers (on kvm-pvm every frame costs
//! emulated guest-kernel work, so the frame sizes these allow count).
//!
//! Environment: `EMBER_BENCH_N` (runs per VMM, default 3), `EMBER_BENCH_NET_MIB` (MiB per
//! transfer, default 1), `EMBER_BENCH_PINGS_SLOW` (pings at 5/s, default 25),
//! `EMBER_BENCH_PINGS_FAST` (pings at 100/s, default 300), `EMBER_BENCH_NO_QEMU=1`. On a
//! kvm-pvm host every frame costs emulated guest-kernel work: on a 2-core machine TCP moved
//! 0.06 MiB/s (host to guest) to 0.6-0.7 MiB/s (guest to host, large offload frames) under
//! either VMM, and a run with 2 MiB transfers took about 2.5 minutes; hence the 1 MiB default.
//! Results: a table on stdout, target/ember-bench/net.json and net.svg.

#[path = "harness/mod.rs"]
mod harness;

use harness::console_vm::ConsoleVm as Vm;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const GUEST_MIB: u64 = 256;
const HOST_IP: &str = "172.30.77.1";
const GUEST_IP: &str = "172.30.77.2";
/// The guest's address, for the kernel's `ip=` (client::server:netmask::device:autoconf).
const GUEST_IP_PARAM: &str = "ip=172.30.77.2::172.30.77.1:255.255.255.0::eth0:off";
/// Both VMMs give the guest this MAC, so the namespace's neighbour entry stays right.
const GUEST_MAC: &str = "06:00:ac:1e:4d:02";
/// What the guest's command prints after its transfers.
const DONE: &str = "ember-bench: net transfers done";
/// Spawn to the first transfer (the boot), and to the end of the transfers.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A server's socket gives up after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(90);
/// The first of the ports one run uses (each run takes the next three).
const FIRST_PORT: u16 = 7100;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Ember,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ember => "Ember",
            Vmm::Qemu => "QEMU",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace and its servers.

use testkit::{enter_netns as enter, run_ok as sh, Netns};

/// Waits for a connection on `l` until `deadline`, looking at `abort` every 200 ms; returns
/// the stream and when it was accepted.
fn accept_within(
    l: &TcpListener,
    deadline: Instant,
    abort: &AtomicBool,
) -> Result<(TcpStream, Instant), String> {
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err("abandoned".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("nobody connected".into());
        }
        let mut p = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(200) as i32) };
        if r > 0 {
            let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            let at = Instant::now();
            s.set_read_timeout(Some(IO_TIMEOUT))
                .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                .map_err(|e| e.to_string())?;
            return Ok((s, at));
        }
    }
}

/// One transfer as a server saw it.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    start: Instant,
    end: Instant,
    bytes: u64,
}

type Serve = Box<dyn FnOnce(TcpStream, Instant) -> Result<Transfer, String> + Send>;

/// A TCP server at `HOST_IP:port` in namespace `ns`, on its own thread: listening when this
/// returns; serves one connection with `serve`.
fn serve_in(
    ns: &str,
    port: u16,
    abort: Arc<AtomicBool>,
    serve: Serve,
) -> Result<JoinHandle<Result<Transfer, String>>, String> {
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let bound = enter(&ns).and_then(|()| {
            TcpListener::bind((HOST_IP, port)).map_err(|e| format!("bind {HOST_IP}:{port}: {e}"))
        });
        let l = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let (s, at) = accept_within(&l, Instant::now() + BOOT_TIMEOUT, &abort)?;
        drop(l);
        serve(s, at)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("server on port {port}: {e}"))??;
    Ok(t)
}

/// Echoes until the guest half-closes: accept to the guest's end of data.
fn echo(mut s: TcpStream, at: Instant) -> Result<Transfer, String> {
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("echo read: {e}"))?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])
            .map_err(|e| format!("echo write: {e}"))?;
        bytes += n as u64;
    }
    Ok(Transfer {
        start: at,
        end: Instant::now(),
        bytes,
    })
}

/// Reads until the guest half-closes, then closes: accept to the guest's end of data.
fn sink(mut s: TcpStream, at: Instant) -> Result<Transfer, String> {
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("sink read: {e}"))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok(Transfer {
        start: at,
        end: Instant::now(),
        bytes,
    })
}

/// Answers one HTTP request with `len` bytes: the request read, to the guest closing.
fn http_source(len: u64) -> Serve {
    Box::new(move |mut s: TcpStream, _at: Instant| {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).map_err(|e| format!("http request: {e}"))?;
            if n == 0 {
                return Err("the guest closed before its request".into());
            }
            req.extend_from_slice(&b[..n]);
        }
        let start = Instant::now();
        s.write_all(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
            )
            .as_bytes(),
        )
        .map_err(|e| format!("http header: {e}"))?;
        let chunk = vec![0x5au8; 256 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n])
                .map_err(|e| format!("http body: {e}"))?;
            left -= n as u64;
        }
        let _ = s.shutdown(Shutdown::Write);
        // The guest closes once it has read everything.
        while s.read(&mut b).map_err(|e| format!("http end: {e}"))? > 0 {}
        Ok(Transfer {
            start,
            end: Instant::now(),
            bytes: len,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Ping.

/// One `ping` run: the round trips of the replies (ms), and how many were sent and came back.
#[derive(Clone, Debug, Default)]
struct Pings {
    rtt_ms: Vec<f64>,
    sent: u64,
    received: u64,
}

/// How long replies are awaited after the last echo request.
const LATE_REPLY: Duration = Duration::from_secs(60);

/// The Internet checksum (RFC 1071) of `b`.
fn inet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `count` ICMP echo requests from namespace `ns` to the guest, `interval` apart, over a raw
/// socket (ping(8)'s own packets: 64 bytes with the header). Replies are awaited until each
/// request has one or `LATE_REPLY` has passed since the last send, so a late reply counts in
/// the round trips and only a request never answered counts as lost; ping(8) stops waiting
/// two round trips after its last send, which counted replies a slow guest still had queued
/// as lost.
fn ping(ns: &str, count: u32, interval: Duration) -> Result<Pings, String> {
    // Sequence numbers are 16 bits; each call has its own identifier, so a very late reply
    // to an earlier call is not taken for one of this call's.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    if count == 0 || count > 65_536 {
        return Err(format!("{count} pings: use 1 to 65536"));
    }
    let id = (std::process::id() as u16) ^ CALLS.fetch_add(1, Ordering::Relaxed);
    let ns = ns.to_string();
    let t = std::thread::spawn(move || -> Result<Pings, String> {
        use std::os::fd::{FromRawFd, OwnedFd};
        enter(&ns)?;
        // SAFETY: a plain socket call; the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(format!(
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 2000,
        };
        // SAFETY: a timeval of the right size for SO_RCVTIMEO.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            // Without it a receive could wait for ever.
            return Err(format!(
                "receive timeout: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ip: std::net::Ipv4Addr = GUEST_IP.parse().map_err(|e| format!("{e}"))?;
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let n = count as usize;
        let mut sent_at: Vec<Option<Instant>> = vec![None; n];
        let mut rtt: Vec<Option<f64>> = vec![None; n];
        let (mut sent, mut got) = (0usize, 0usize);
        let start = Instant::now();
        loop {
            let now = Instant::now();
            if sent < n && now >= start + interval * sent as u32 {
                let mut pkt = [0u8; 64];
                pkt[0] = 8; // echo request
                pkt[4..6].copy_from_slice(&id.to_be_bytes());
                pkt[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
                for (i, b) in pkt[8..].iter_mut().enumerate() {
                    *b = i as u8;
                }
                let c = inet_checksum(&pkt);
                pkt[2..4].copy_from_slice(&c.to_be_bytes());
                // SAFETY: a buffer and an address of the sizes given.
                let r = unsafe {
                    libc::sendto(
                        sock.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&dst as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if r < 0 {
                    return Err(format!("send: {}", std::io::Error::last_os_error()));
                }
                sent_at[sent] = Some(Instant::now());
                sent += 1;
                continue;
            }
            if sent == n && (got == n || sent_at[n - 1].is_some_and(|t| t.elapsed() > LATE_REPLY)) {
                break;
            }
            let mut buf = [0u8; 2048];
            // SAFETY: a buffer of the size given.
            let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r <= 0 {
                continue; // the 2 ms timeout, or an interruption
            }
            let at = Instant::now();
            let b = &buf[..r as usize];
            let ihl = usize::from(b[0] & 0xf) * 4;
            let Some(icmp) = b.get(ihl..ihl + 8) else {
                continue;
            };
            if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
                continue; // not an echo reply of ours
            }
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if let (Some(Some(t)), Some(slot)) = (sent_at.get(seq), rtt.get_mut(seq)) {
                if slot.is_none() {
                    *slot = Some(at.duration_since(*t).as_secs_f64() * 1e3);
                    got += 1;
                }
            }
        }
        Ok(Pings {
            rtt_ms: rtt.into_iter().flatten().collect(),
            sent: sent as u64,
            received: got as u64,
        })
    });
    t.join()
        .unwrap_or_else(|_| Err("the pinger panicked".into()))
}

// ---------------------------------------------------------------------------------------------
// One run.

struct Plan {
    vmlinux: String,
    initrd: String,
    tcp_bytes: u64,
    pings_slow: u32,
    pings_fast: u32,
}

/// What one run gave.
#[derive(Clone, Debug, Default)]
struct RunFigures {
    /// Echo, both directions counted.
    echo_mib_s: Option<f64>,
    send_mib_s: Option<f64>,
    recv_mib_s: Option<f64>,
    slow: Option<Pings>,
    fast: Option<Pings>,
    /// Spawn to the echo's connection.
    boot_s: Option<f64>,
    /// The NIC's interrupts the guest took from boot to the end of the transfers (its
    /// `/proc/interrupts` line): interrupt coalescing shows here.
    guest_irqs: Option<f64>,
    /// The vCPU's exits as KVM counted them, from the spawn to the end of the pings: Ember's
    /// `--boot-timer` line, QEMU's QMP `query-stats`. The same guest work under both, so a
    /// difference is what the VMM makes the guest exit for.
    exits: Option<f64>,
    errors: Vec<String>,
}

impl RunFigures {
    fn json(&self) -> Value {
        let p = |p: &Option<Pings>| {
            p.as_ref()
                .map(|p| json!({"sent": p.sent, "received": p.received, "rtt_ms": p.rtt_ms}))
        };
        json!({
            "echo_mib_s": self.echo_mib_s,
            "send_mib_s": self.send_mib_s,
            "recv_mib_s": self.recv_mib_s,
            "ping_slow": p(&self.slow),
            "ping_fast": p(&self.fast),
            "spawn_to_first_connection_s": self.boot_s,
            "guest_irqs": self.guest_irqs,
            "vcpu_exits": self.exits,
            "errors": self.errors,
        })
    }
}

/// One figure of a run.
type Figure = fn(&RunFigures) -> Option<f64>;

fn guest_script(port: u16, bytes: u64) -> String {
    format!(
        "xfer check tcp {HOST_IP} {port} {bytes}; xfer check tcp {HOST_IP} {} {bytes}; \
         wget -q -O /dev/null http://{HOST_IP}:{}/bench; grep virtio /proc/interrupts; \
         echo {DONE}; exec sleep 100000",
        port + 1,
        port + 2
    )
}

/// QEMU's QMP socket for run `run`.
fn qmp_path(run: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ember-bench-net-{}-{run}.qmp", std::process::id()))
}

/// The count on Ember's `--boot-timer` line `vCPU exits: N (...)`.
fn ember_exits(stderr: &str) -> Option<f64> {
    let rest = stderr.split("vCPU exits: ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn vmm_command(vmm: Vmm, ns: &str, plan: &Plan, script: &str, run: u16) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    match vmm {
        Vmm::Ember => {
            c.arg(harness::ember_bin()).args([
                "--kernel",
                &plan.vmlinux,
                "--initrd",
                &plan.initrd,
                "--memory",
                &format!("{GUEST_MIB}M"),
                // The exit count at the end, and no shutdown work counted in it.
                "--boot-timer",
                "--stop-grace",
                "0",
                "--net",
                &format!("tap=tap0,mac={GUEST_MAC}"),
                "--cmdline",
                &format!("{} {GUEST_IP_PARAM}", vmm::DEFAULT_CMDLINE),
                "--",
                "sh",
                "-c",
                script,
            ]);
        }
        Vmm::Qemu => {
            let argv = ["sh".to_string(), "-c".to_string(), script.to_string()];
            let encoded = vmm::command::encode(&argv).expect("encodable command");
            let mut a = harness::qemu_args(
                std::path::Path::new(&plan.vmlinux),
                Some(std::path::Path::new(&plan.initrd)),
                &format!("{} {GUEST_IP_PARAM} {encoded}", harness::guest_cmdline()),
                GUEST_MIB,
            );
            a.extend([
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
                "-netdev".into(),
                "tap,id=n0,ifname=tap0,script=no,downscript=no".into(),
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", qmp_path(run).display()),
            ]);
            c.arg("qemu-system-x86_64").args(a);
        }
    }
    c
}

fn mib_s(t: &Transfer, bytes: f64) -> f64 {
    bytes / MIB / t.end.duration_since(t.start).as_secs_f64().max(1e-9)
}

/// Boots `vmm` in the namespace, runs the transfers and the pings; `run` numbers the ports.
fn run_one(vmm: Vmm, ns: &str, plan: &Plan, run: u16) -> RunFigures {
    let mut f = RunFigures::default();
    // A fresh neighbour table: each VMM starts from the same state.
    let _ = sh(&["ip", "-n", ns, "neigh", "flush", "dev", "tap0"]);
    let port = FIRST_PORT + 3 * run;
    let abort = Arc::new(AtomicBool::new(false));
    let servers: Result<Vec<_>, String> = [
        (port, Box::new(echo) as Serve),
        (port + 1, Box::new(sink) as Serve),
        (port + 2, http_source(plan.tcp_bytes)),
    ]
    .into_iter()
    .map(|(p, s)| serve_in(ns, p, abort.clone(), s))
    .collect();
    let servers = match servers {
        Ok(s) => s,
        Err(e) => {
            abort.store(true, Ordering::Relaxed);
            f.errors.push(e);
            return f;
        }
    };
    let script = guest_script(port, plan.tcp_bytes);
    let t0 = Instant::now();
    let mut vm = match Vm::spawn(&mut vmm_command(vmm, ns, plan, &script, run)) {
        Ok(vm) => vm,
        Err(e) => {
            abort.store(true, Ordering::Relaxed);
            f.errors.push(format!("{}: {e}", vmm.name()));
            return f;
        }
    };
    // The echo's end is when the guest has everything back: its console line.
    let first = vm.wait_line(|l| l.contains("xfer: "), BOOT_TIMEOUT);
    let done = vm.wait_line(|l| l.contains(DONE), BOOT_TIMEOUT);
    if done.is_none() {
        abort.store(true, Ordering::Relaxed);
    }
    let mut results = servers.into_iter().map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("server thread panicked".into()))
    });
    let (echo_r, sink_r, source_r) = (
        results.next().expect("three servers"),
        results.next().expect("three servers"),
        results.next().expect("three servers"),
    );
    let bytes = plan.tcp_bytes as f64;
    match (&echo_r, &first) {
        (Ok(t), Some((at, line))) if line.contains(&format!("check ok {}", plan.tcp_bytes)) => {
            f.boot_s = Some(t.start.duration_since(t0).as_secs_f64());
            f.echo_mib_s = Some(mib_s(
                &Transfer {
                    start: t.start,
                    end: *at,
                    bytes: 2 * plan.tcp_bytes,
                },
                2.0 * bytes,
            ));
        }
        (Err(e), _) => f.errors.push(format!("echo: {e}")),
        (_, line) => f.errors.push(format!("echo: the guest said {line:?}")),
    }
    match sink_r {
        Ok(t) if t.bytes == plan.tcp_bytes => f.send_mib_s = Some(mib_s(&t, bytes)),
        Ok(t) => f
            .errors
            .push(format!("send only: {} bytes arrived", t.bytes)),
        Err(e) => f.errors.push(format!("send only: {e}")),
    }
    match source_r {
        Ok(t) => f.recv_mib_s = Some(mib_s(&t, bytes)),
        Err(e) => f.errors.push(format!("receive only: {e}")),
    }
    f.guest_irqs = vm
        .find(&|l: &str| l.contains("virtio") && irq_count(l).is_some())
        .and_then(|(_, l)| irq_count(&l));
    if done.is_some() {
        // Warm-up: the neighbour entries both ways.
        let _ = ping(ns, 3, Duration::from_millis(200));
        match ping(ns, plan.pings_slow, Duration::from_millis(200)) {
            Ok(p) => f.slow = Some(p),
            Err(e) => f.errors.push(format!("ping 5/s: {e}")),
        }
        match ping(ns, plan.pings_fast, Duration::from_millis(10)) {
            Ok(p) => f.fast = Some(p),
            Err(e) => f.errors.push(format!("ping 100/s: {e}")),
        }
    } else {
        f.errors
            .push("the guest did not finish its transfers".into());
    }
    let console = vm.tail(15);
    let stderr = match vmm {
        Vmm::Ember => {
            let stderr = vm.terminate(Duration::from_secs(10));
            f.exits = ember_exits(&stderr);
            stderr
        }
        Vmm::Qemu => {
            let qmp = qmp_path(run);
            match harness::qmp::Qmp::connect(&qmp, Duration::from_secs(5))
                .and_then(|mut q| q.vcpu_exits())
            {
                Ok(n) => f.exits = Some(n as f64),
                Err(e) => f.errors.push(e),
            }
            let _ = std::fs::remove_file(&qmp);
            vm.stop()
        }
    };
    if f.exits.is_none() {
        f.errors.push("no vCPU exit count".into());
    }
    if f.fast.is_none() || f.slow.is_none() {
        // The count's window did not end where a full run's does.
        f.exits = None;
    }
    if !f.errors.is_empty() {
        eprintln!(
            "bench: {} run failed in part: {}\n--- console (end)\n{console}\n--- stderr (end)\n{}",
            vmm.name(),
            f.errors.join("; "),
            stderr
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    f
}

/// The count of a one-CPU `/proc/interrupts` line (`  5:  1234  IO-APIC  5-edge  virtio0`).
fn irq_count(line: &str) -> Option<f64> {
    let (irq, rest) = line.trim_start().split_once(':')?;
    irq.parse::<u32>().ok()?;
    rest.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Figures across runs.

/// `v` sorted, and the sample at rank `round((n - 1) * p)`.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[((s.len() - 1) as f64 * p).round() as usize])
}

/// Every run's pings of one kind pooled: round trips, and loss in per cent.
fn pooled(runs: &[RunFigures], fast: bool) -> (Vec<f64>, Option<f64>) {
    let mut rtt = Vec::new();
    let (mut sent, mut received) = (0u64, 0u64);
    let pick = |r: &RunFigures| if fast { r.fast.clone() } else { r.slow.clone() };
    for p in runs.iter().filter_map(pick) {
        rtt.extend_from_slice(&p.rtt_ms);
        sent += p.sent;
        received += p.received;
    }
    let loss = (sent > 0).then(|| 100.0 * sent.saturating_sub(received) as f64 / sent as f64);
    (rtt, loss)
}

#[derive(Clone, Copy)]
enum Goal {
    /// Ember/QEMU at least 1.0.
    AtLeastQemu,
    /// Ember/QEMU at most 1.0.
    AtMostQemu,
    /// Ember's figure is zero.
    Zero,
    None,
}

fn row(name: &str, e: Option<f64>, q: Option<f64>, goal: Goal) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let ratio = match (e, q) {
        (Some(e), Some(q)) if q > 0.0 => Some(e / q),
        _ => None,
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    };
    let goal = match goal {
        Goal::AtLeastQemu => format!(">= 1.0x: {}", verdict(ratio.map(|r| r >= 1.0))),
        Goal::AtMostQemu => format!("<= 1.0x: {}", verdict(ratio.map(|r| r <= 1.0))),
        Goal::Zero => format!("0: {}", verdict(e.map(|e| e == 0.0))),
        Goal::None => String::new(),
    };
    format!(
        "| {name:<40} | {:>9} | {:>9} | {:>10} | {goal:<15} |",
        f(e),
        f(q),
        ratio.map_or("-".to_string(), |r| format!("{r:.3}"))
    )
}

fn header() -> String {
    format!(
        "| {:<40} | {:>9} | {:>9} | {:>10} | {:<15} |\n|{}|{}|{}|{}|{}|",
        "figure",
        "Ember",
        "QEMU",
        "Ember/QEMU",
        "goal",
        "-".repeat(42),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(12),
        "-".repeat(17)
    )
}

/// The table's rows, and the same figures for the JSON.
struct Table {
    rows: Vec<String>,
    figures: serde_json::Map<String, Value>,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            rows: vec![header()],
            figures: serde_json::Map::new(),
        }
    }
}

impl Table {
    fn add(&mut self, key: &str, name: &str, e: Option<f64>, q: Option<f64>, goal: Goal) {
        self.rows.push(row(name, e, q, goal));
        self.figures.insert(
            key.to_string(),
            json!({"figure": name, "ember": e, "qemu": q}),
        );
    }
}

fn main() {
    if !harness::bench_requested("net") {
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("net: SKIPPED: the net benchmark needs root (a network namespace with a TAP)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        println!("net: SKIPPED: `ip` is missing (apt-get install iproute2)");
        return;
    }
    let rounds: u16 = harness::env_or("EMBER_BENCH_N", 3);
    let mib: u64 = harness::env_or("EMBER_BENCH_NET_MIB", 1);
    let (vmlinux, _) = harness::kernel();
    let plan = Plan {
        vmlinux: vmlinux.display().to_string(),
        initrd: harness::initramfs().display().to_string(),
        tcp_bytes: mib << 20,
        pings_slow: harness::env_or("EMBER_BENCH_PINGS_SLOW", 25),
        pings_fast: harness::env_or("EMBER_BENCH_PINGS_FAST", 300),
    };
    let qemu = if std::env::var("EMBER_BENCH_NO_QEMU").is_ok() {
        None
    } else {
        harness::qemu_version()
    };
    if qemu.is_none() {
        eprintln!("bench: QEMU skipped (not installed or EMBER_BENCH_NO_QEMU)");
    }
    let ns = match Netns::create("bench-net") {
        Ok(ns) => ns,
        Err(e) => {
            println!("net: SKIPPED: cannot make the network namespace: {e}");
            return;
        }
    };

    let started = Instant::now();
    let (mut ember, mut q) = (Vec::new(), Vec::new());
    let mut run = 0u16;
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [Vmm::Ember, Vmm::Qemu]
        } else {
            [Vmm::Qemu, Vmm::Ember]
        };
        for vmm in order {
            if vmm == Vmm::Qemu && qemu.is_none() {
                continue;
            }
            eprintln!("bench: net round {}/{rounds} ({})", r + 1, vmm.name());
            let t = Instant::now();
            let f = run_one(vmm, &ns.0, &plan, run);
            run += 1;
            eprintln!(
                "bench: {}: echo {} MiB/s, send {} MiB/s, receive {} MiB/s, ping 5/s median {} ms, \
                 100/s median {} ms ({:.1} s)",
                vmm.name(),
                opt(f.echo_mib_s),
                opt(f.send_mib_s),
                opt(f.recv_mib_s),
                opt(f.slow.as_ref().and_then(|p| percentile(&p.rtt_ms, 0.5))),
                opt(f.fast.as_ref().and_then(|p| percentile(&p.rtt_ms, 0.5))),
                t.elapsed().as_secs_f64()
            );
            match vmm {
                Vmm::Ember => ember.push(f),
                Vmm::Qemu => q.push(f),
            }
        }
    }
    drop(ns);

    let mut table = Table::default();
    for (fast, label, key) in [(false, "5/s", "slow"), (true, "100/s", "fast")] {
        let (er, el) = pooled(&ember, fast);
        let (qr, ql) = pooled(&q, fast);
        for (stat, p) in [("min", 0.0), ("median", 0.5), ("p99", 0.99)] {
            table.add(
                &format!("ping_{key}_rtt_{stat}_ms"),
                &format!("ping {label} round trip, {stat} (ms)"),
                percentile(&er, p),
                percentile(&qr, p),
                Goal::AtMostQemu,
            );
        }
        table.add(
            &format!("ping_{key}_loss_pct"),
            &format!("ping {label} loss (%)"),
            el,
            ql,
            if fast { Goal::Zero } else { Goal::None },
        );
    }
    let med =
        |v: &[RunFigures], f: Figure| harness::median(&v.iter().filter_map(f).collect::<Vec<_>>());
    let tcp: [(&str, &str, Figure); 3] = [
        (
            "tcp_echo_mib_s",
            "TCP echo, both ways counted (MiB/s)",
            |r| r.echo_mib_s,
        ),
        (
            "tcp_send_mib_s",
            "TCP guest to host, send only (MiB/s)",
            |r| r.send_mib_s,
        ),
        ("tcp_recv_mib_s", "TCP host to guest, wget (MiB/s)", |r| {
            r.recv_mib_s
        }),
    ];
    for (key, name, get) in tcp {
        table.add(key, name, med(&ember, get), med(&q, get), Goal::AtLeastQemu);
    }
    let counts: [(&str, &str, Figure); 2] = [
        (
            "guest_nic_irqs",
            "guest NIC interrupts, boot to end of transfers",
            |r| r.guest_irqs,
        ),
        (
            "vcpu_exits",
            "vCPU exits, spawn to end of pings (KVM's count)",
            |r| r.exits,
        ),
    ];
    for (key, name, get) in counts {
        table.add(key, name, med(&ember, get), med(&q, get), Goal::None);
    }

    let v = json!({
        "benchmark": "net",
        "host": {"pvm": harness::host_is_pvm(), "qemu": qemu},
        "guest": {
            "kernel": plan.vmlinux,
            "initrd": plan.initrd,
            "cmdline": format!("{} {GUEST_IP_PARAM}", harness::guest_cmdline()),
            "memory_mib": GUEST_MIB,
            "command": guest_script(FIRST_PORT, plan.tcp_bytes),
            "qemu_cpu": harness::qemu_cpu(),
        },
        "rounds": rounds,
        "tcp_bytes": plan.tcp_bytes,
        "pings": {"slow": {"count": plan.pings_slow, "interval_s": 0.2},
                  "fast": {"count": plan.pings_fast, "interval_s": 0.01}},
        "figures": table.figures,
        "ember": ember.iter().map(RunFigures::json).collect::<Vec<_>>(),
        "qemu": q.iter().map(RunFigures::json).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let json_path = harness::write_json("net", &v);
    let series = |v: &[RunFigures], get: Figure| -> Vec<f64> { v.iter().filter_map(get).collect() };
    let (es, qs) = (pooled(&ember, false).0, pooled(&q, false).0);
    let (ef, qf) = (pooled(&ember, true).0, pooled(&q, true).0);
    let (ee, qe) = (series(&ember, tcp[0].2), series(&q, tcp[0].2));
    let (esd, qsd) = (series(&ember, tcp[1].2), series(&q, tcp[1].2));
    let (erv, qrv) = (series(&ember, tcp[2].2), series(&q, tcp[2].2));
    let svg = harness::plot_panels(
        "net",
        &[
            ("ping 5/s", "ms", &[("Ember", &es), ("QEMU", &qs)]),
            ("ping 100/s", "ms", &[("Ember", &ef), ("QEMU", &qf)]),
            ("TCP echo", "MiB/s", &[("Ember", &ee), ("QEMU", &qe)]),
            (
                "TCP guest to host",
                "MiB/s",
                &[("Ember", &esd), ("QEMU", &qsd)],
            ),
            (
                "TCP host to guest",
                "MiB/s",
                &[("Ember", &erv), ("QEMU", &qrv)],
            ),
        ],
    );
    println!(
        "virtio-net between a guest and a network namespace: {mib} MiB per transfer, {} + {} \
         pings per run; {rounds} run(s) per VMM, pings pooled, transfers the median; {:.0} s\n\n{}\n\n\
         JSON: {}\nplot: {}",
        plan.pings_slow,
        plan.pings_fast,
        started.elapsed().as_secs_f64(),
        table.rows.join("\n"),
        json_path.display(),
        svg.display()
    );
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}"))
}
