//! virtio-vsock end to end, with Firecracker's host-side protocol, against a real Linux guest
//! whose initramfs program `xfer` listens on a vsock port and echoes (see
//! `resources/initramfs/xfer.c`). One boot serves every host-side scenario in turn: exact
//! echoes of 1 byte, 64 KiB and 16 MiB, many connections at once, a port nothing listens on,
//! bad `CONNECT` lines, a host that closes mid-stream; and the guest's own connections to
//! host listeners at `<socket>_<port>`. Nothing here needs root.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ember_bin, guest_initramfs, guest_kernel, require_kvm, ConsoleChild, TempDir};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Connects through the device's socket to guest `port`; returns the stream after `OK` and
/// the host port Ember gave it.
fn connect(sock: &Path, port: u32) -> Result<(UnixStream, u32), String> {
    testkit::vsock_connect(sock, port, Duration::from_secs(60))
}

/// Sends `data` to the guest's echo server and returns what came back (the sending half is
/// closed after the data, so the echo ends).
fn echo(sock: &Path, data: &[u8]) -> Vec<u8> {
    let (s, _) = connect(sock, 5000).expect("connect to the echo server");
    let mut w = s.try_clone().expect("clone");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("send");
        w.shutdown(std::net::Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    let mut r = s;
    r.read_to_end(&mut back).expect("echo");
    writer.join().expect("writer");
    back
}

/// A host listener at `<sock>_<port>` that serves one connection with `serve`.
fn host_listener(
    sock: &Path,
    port: u32,
    serve: impl FnOnce(UnixStream) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<Vec<u8>> {
    let l = UnixListener::bind(format!("{}_{port}", sock.display())).expect("bind");
    std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        serve(s)
    })
}

#[test]
fn vsock_streams_carry_exact_bytes_both_ways_through_firecrackers_protocol() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("vsock");
    let sock = dir.0.join("v.sock");
    // The guest says hello to port 6000 and sends 4 MiB to an echo at 6001 before it serves.
    let hello = host_listener(&sock, 6000, |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read the guest's message");
        s.write_all(b"pong:").expect("reply");
        s.write_all(&got).expect("reply");
        got
    });
    let big = 4u64 << 20;
    let guest_echo = host_listener(&sock, 6001, |mut s| common::echo_stream(&mut s));
    let (vmlinux, _) = guest_kernel();
    let mut vm = ConsoleChild::spawn(Command::new(ember_bin()).args([
        "--kernel",
        vmlinux.to_str().expect("utf-8"),
        "--initrd",
        guest_initramfs().to_str().expect("utf-8"),
        "--vsock",
        &format!("cid=3,socket={}", sock.display()),
        "--",
        "sh",
        "-c",
        &format!("xfer say vsock 2 6000 ping-from-guest && xfer check vsock 2 6001 {big} && xfer echo vsock 5000"),
    ]));
    vm.wait_for(
        "xfer: listening on vsock port 5000",
        Duration::from_secs(600),
    );
    let text = vm.text();
    assert!(text.contains("xfer: reply pong:ping-from-guest"), "{text}");
    assert!(
        text.contains(&format!("xfer: check ok {big} bytes")),
        "{text}"
    );
    assert_eq!(hello.join().expect("hello"), b"ping-from-guest");
    let seen = guest_echo.join().expect("guest echo");
    assert_eq!(seen.len() as u64, big, "the host saw what the guest sent");
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, &b)| b == common::xfer_pattern(i as u64)),
        "the host received the guest's pattern exactly"
    );

    // Host to guest: exact echoes of 1 byte, 64 KiB and 16 MiB.
    for (len, seed) in [(1usize, 1u64), (64 << 10, 2), (16 << 20, 3)] {
        let data = random_bytes(len, seed);
        let t = Instant::now();
        let back = echo(&sock, &data);
        assert!(
            back == data,
            "echo of {len} bytes differs ({} came back)",
            back.len()
        );
        eprintln!("vsock: {len} bytes echoed in {:?}", t.elapsed());
    }

    // Host ports are fresh for each connection, from 2^30 as Firecracker's.
    let (_a, pa) = connect(&sock, 5000).expect("a");
    let (_b, pb) = connect(&sock, 5000).expect("b");
    assert!(pa >= 1 << 30 && pb >= 1 << 30 && pa != pb, "{pa} {pb}");
    drop((_a, _b));

    // Many connections at once, each with its own bytes.
    let workers: Vec<_> = (0..16u64)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let data = random_bytes(128 << 10, 100 + i);
                echo(&sock, &data) == data
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        assert!(
            w.join().expect("worker"),
            "connection {i} got other bytes back"
        );
    }

    // A port nothing listens on: refused, the host stream closed with no OK.
    let t = Instant::now();
    let refused = connect(&sock, 5999).expect_err("nothing listens on 5999");
    assert!(refused.starts_with("closed"), "{refused}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        t.elapsed()
    );

    // Bad CONNECT lines are closed.
    for line in [&b"HELLO 5000\n"[..], b"CONNECT five\n", &[b'x'; 100]] {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(line).expect("write");
        let mut buf = [0u8; 16];
        // Closed: at its end, or reset when Ember left bytes of it unread.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{line:?} was not refused: {other:?}"),
        }
    }

    // The host closes mid-stream without reading its echo: the guest's connection is reset,
    // and the device goes on serving.
    {
        let (mut s, _) = connect(&sock, 5000).expect("connect");
        // As much as the path takes: with nobody reading the echo, the guest's writes stall,
        // then its reads, then ours (flow control, by design), so write until that happens.
        s.set_nonblocking(true).expect("nonblocking");
        let data = random_bytes(1 << 20, 9);
        let (mut sent, mut idle) = (0, 0);
        while sent < data.len() && idle < 20 {
            match s.write(&data[sent..]) {
                Ok(n) => (sent, idle) = (sent + n, 0),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    idle += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        assert!(
            sent >= 64 << 10,
            "only {sent} bytes went in before the stream stalled"
        );
        eprintln!("vsock: host sent {sent} bytes, then closed without reading");
    }
    let data = random_bytes(300_000, 10);
    assert!(echo(&sock, &data) == data, "echo after a host went away");

    // SIGTERM: the guest shuts down; the socket file goes with the VM.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let (status, text, err) = vm.finish(Duration::from_secs(120));
    // A stop by signal ends with 128 + the signal, after the guest's own shutdown.
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{status:?}\n{text}\n{err}"
    );
    assert!(text.contains("reboot: Power down"), "{text}\n{err}");
    assert!(!sock.exists(), "the vsock socket file is left behind");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_vsock_socket_that_exists_already_is_refused_with_one_line() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("vsock-exists");
    let sock = dir.0.join("taken.sock");
    std::fs::write(&sock, b"someone else's").expect("file");
    let (vmlinux, _) = guest_kernel();
    let out = Command::new(ember_bin())
        .args(["--kernel", vmlinux.to_str().expect("utf-8")])
        .args(["--vsock", &format!("cid=3,socket={}", sock.display())])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("vsock socket") && err.contains("in use"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&sock).expect("still there"),
        b"someone else's",
        "the file was touched"
    );
    for bad in [
        "cid=2,socket=/tmp/x",
        "cid=3",
        "socket=/tmp/x",
        "cid=x,socket=/y",
        "cid=3,socket=/tmp/x,foo=1",
    ] {
        let out = Command::new(ember_bin())
            .args(["--kernel", vmlinux.to_str().expect("utf-8"), "--vsock", bad])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("vsock"), "{bad}: {err}");
    }
}
