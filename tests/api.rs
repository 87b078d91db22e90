//! The Firecracker-compatible API, driven over its Unix socket by a plain hand-written HTTP
//! client, as Firecracker's users drive it: the request sequences of Firecracker's
//! getting-started and snapshot docs on a real Linux guest (boot source, root drive, machine
//! config, InstanceStart; pause, snapshot create, resume; in a new process snapshot load and
//! resume), bad input of every kind with the VM and the API working on, `--no-api
//! --config-file`, and the socket's life. The Linux test boots once and restores once; the
//! others use the tiny test guest (milliseconds).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api_client::{exchange, parse, request_bytes, Ember};
use common::{guest_kernel, guest_rootfs, require_kvm, tiny_guest};

/// One Linux boot or command (a minute or more on a loaded kvm-pvm host); a hang fails.
const T: Duration = Duration::from_secs(600);

fn scratch(name: &str) -> PathBuf {
    // Short: a Unix socket path holds at most 107 bytes.
    let d = std::env::temp_dir().join(format!("ember-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The console lines `tick-N` so far, as numbers.
fn ticks(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick-")?.parse().ok())
        .collect()
}

#[test]
fn firecracker_getting_started_then_pause_snapshot_resume_and_load_in_a_new_process() {
    if !require_kvm() {
        return;
    }
    let (vmlinux, _) = guest_kernel();
    let rootfs = guest_rootfs();
    let dir = scratch("gs");
    // The guest's command counts on the console, once a second, until it is stopped.
    let cmd = vmm::command::encode(&[
        "sh".to_string(),
        "-c".to_string(),
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done".to_string(),
    ])
    .expect("encodable");
    let boot_args = format!("{} {cmd}", vmm::DEFAULT_CMDLINE);

    let mut a = Ember::spawn(&dir, "fc.sock", &[]);
    assert_eq!(a.state(), "Not started");
    // docs/getting-started.md, in its order.
    let log = dir.join("fc.log");
    a.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#, s(&log)),
    );
    a.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "{boot_args}"}}"#,
            s(vmlinux)
        ),
    );
    a.ok(
        "PUT",
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": true}}"#,
            s(rootfs)
        ),
    );
    a.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    );
    let (status, cfg) = a.request("GET", "/vm/config", None);
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["boot-source"]["kernel_image_path"], s(vmlinux));
    a.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(a.state(), "Running");
    // What may not change after the start.
    let after = "The requested operation is not supported after starting the microVM.";
    assert_eq!(
        a.fault(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        ),
        after
    );
    assert_eq!(
        a.fault(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#)
        ),
        after
    );
    assert_eq!(
        a.fault(
            "PUT",
            "/boot-source",
            Some(&format!(r#"{{"kernel_image_path": "{}"}}"#, s(vmlinux)))
        ),
        after
    );
    a.wait_for_console("tick-2", T);
    let console = a.stdout();
    assert!(
        console.contains("Run /sbin/init as init process"),
        "{console}"
    );
    assert!(
        console.contains("/dev/vda") || console.contains("VFS: Mounted root"),
        "the root drive is the root filesystem: {console}"
    );

    // docs/snapshotting/snapshot-support.md: pause, create, resume.
    a.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(a.state(), "Paused");
    std::thread::sleep(Duration::from_millis(500));
    let paused_at = ticks(&a.stdout()).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ticks(&a.stdout()).len(),
        paused_at,
        "a paused guest prints nothing"
    );
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    a.ok(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            s(&snap),
            s(&mem)
        ),
    );
    assert!(snap.join("state").is_file() && mem.is_file());
    let last_before_snapshot = *ticks(&a.stdout()).last().expect("ticks");
    a.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(a.state(), "Running");
    a.wait_for_console(&format!("tick-{}", last_before_snapshot + 2), T);
    // Ctrl+Alt+Del: the guest shuts down and the process exits 0, as Firecracker's does
    // when its guest reboots.
    a.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let status = a.wait(T);
    assert_eq!(status.code(), Some(0), "stderr: {}", a.stderr());
    assert!(!a.sock.exists(), "the socket file is removed at exit");
    let logged = std::fs::read_to_string(&log).expect("log file");
    assert!(
        logged.contains("not supported after starting"),
        "PUT /logger sent the log there: {logged}"
    );

    // A new process loads the snapshot (before any boot configuration) and resumes it.
    let b = Ember::spawn(&dir, "fc2.sock", &[]);
    let copy = dir.join("copy.mem");
    std::fs::copy(&mem, &copy).expect("copy");
    let e = b.fault(
        "PUT",
        "/snapshot/load",
        Some(&format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            s(&snap),
            s(&copy)
        )),
    );
    assert!(
        e.contains("is not the memory file of the Ember snapshot"),
        "{e}"
    );
    b.ok(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": false}}"#,
            s(&snap),
            s(&mem)
        ),
    );
    assert_eq!(b.state(), "Paused");
    let (_, m) = b.request("GET", "/machine-config", None);
    assert!(m.contains("\"vcpu_count\":2"), "{m}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(ticks(&b.stdout()).is_empty(), "loaded paused: nothing runs");
    b.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let next = last_before_snapshot + 1;
    b.wait_for_console(&format!("tick-{next}"), T);
    let restored = b.stdout();
    assert!(
        !restored.contains("as init process"),
        "restored, not booted: {restored}"
    );
    assert!(
        ticks(&restored).iter().all(|t| *t > last_before_snapshot),
        "the count goes on from the snapshot: {restored}"
    );
    b.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let mut b = b;
    assert_eq!(b.wait(T).code(), Some(0), "stderr: {}", b.stderr());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_requests_get_firecrackers_answers_and_the_vm_and_the_api_keep_working() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("bad");
    let e = Ember::spawn(&dir, "fc.sock", &[]);
    // Out of order, before the start.
    let before = "The requested operation is not supported before starting the microVM.";
    assert_eq!(
        e.fault("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
        before
    );
    assert_eq!(
        e.fault(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#)
        ),
        before
    );
    assert_eq!(
        e.fault(
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/x", "mem_file_path": "/y"}"#)
        ),
        before
    );
    assert!(e
        .fault(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .contains("Cannot start microvm without kernel configuration"));
    // Malformed JSON, unknown fields, wrong types, unsupported fields and paths.
    let m = e.fault(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": }"#),
    );
    assert!(
        m.starts_with("An error occurred when deserializing the json body of a request"),
        "{m}"
    );
    assert!(e
        .fault(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}"#)
        )
        .contains("unknown field `cpus`"));
    assert!(e
        .fault(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "one", "mem_size_mib": 128}"#)
        )
        .contains("invalid type"));
    assert!(e
        .fault(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}"#)
        )
        .contains("smt=true is not supported by Ember"));
    assert!(e
        .fault("PUT", "/drives/d", Some(r#"{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "io_engine": "Async"}"#))
        .contains("io_engine Async"));
    assert!(e
        .fault("PUT", "/balloon", Some("{}"))
        .contains("not supported by Ember"));
    assert!(e
        .fault("GET", "/nothing", None)
        .starts_with("Invalid request method and/or path"));
    // Framing: oversized body, chunked, garbage; each answered and the connection closed.
    let big = format!("{{\"kernel_image_path\": \"{}\"}}", "k".repeat(60_000));
    let (code, text) = parse(&exchange(
        &e.sock,
        &request_bytes("PUT", "/boot-source", Some(&big)),
    ));
    assert_eq!(code, 400);
    assert!(text.contains("larger than the limit of 51200"), "{text}");
    let r = exchange(
        &e.sock,
        b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 501"), "{r}");
    assert!(exchange(&e.sock, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400"));

    // Start the tiny guest waiting for Ctrl+Alt+Del; then the same abuse while it runs.
    let tiny = tiny_guest();
    e.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "action=kbd"}}"#,
            s(tiny)
        ),
    );
    e.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    let metrics = dir.join("metrics.json");
    e.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, s(&metrics)),
    );
    e.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let after = "The requested operation is not supported after starting the microVM.";
    assert_eq!(
        e.fault(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        ),
        after
    );
    // A client that connects and sends nothing, one that leaves mid-request.
    let _silent = std::os::unix::net::UnixStream::connect(&e.sock).expect("connect");
    {
        use std::io::Write;
        let mut half = std::os::unix::net::UnixStream::connect(&e.sock).expect("connect");
        half.write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"sta")
            .expect("half");
    }
    assert!(e
        .fault("PATCH", "/vm", Some("{\"state\": \"Sleeping\"}"))
        .contains("unknown variant"));
    assert!(e
        .fault(
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/x", "mem_file_path": "/y"}"#)
        )
        .contains("must be paused first"));
    // A flushed metrics line carries the VM's exits: the guest polls the i8042 port, so
    // there are some.
    e.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a metrics line")).expect("JSON line");
    let exits = last["kvm_exits"]["exits"].as_u64();
    assert!(exits.is_some_and(|n| n > 0), "{last}");
    // Pause and resume work, the guest is alive and answers Ctrl+Alt+Del with its status 77.
    e.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(e.state(), "Paused");
    e.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = e.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        );
        if status == 204 {
            break;
        }
        // The tiny guest enables its keyboard a moment after the start.
        assert!(body.contains("keyboard is not ready"), "{body}");
        assert!(Instant::now() < deadline, "the keyboard never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut e = e;
    assert_eq!(e.wait(T).code(), Some(77), "stderr: {}", e.stderr());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_api_config_file_boots_at_once_and_exits_with_the_guests_status() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("cfg");
    let file = dir.join("vm_config.json");
    let config = |args: &str| {
        serde_json::json!({
            "boot-source": {"kernel_image_path": s(tiny_guest()), "boot_args": args},
            "drives": [],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
            "network-interfaces": [],
            "balloon": null,
            "logger": {"level": "Info"},
        })
        .to_string()
    };
    std::fs::write(&file, config("action=print say=from-config-file status=9")).expect("write");
    let mut e = Ember::spawn_args(&["--no-api", "--config-file", s(&file)]);
    assert_eq!(e.wait(T).code(), Some(9), "stderr: {}", e.stderr());
    assert!(
        e.stdout().contains("from-config-file"),
        "the console is on stdout"
    );
    // With the API as well: the VM starts from the file, and the API serves it.
    let waiting = dir.join("kbd.json");
    std::fs::write(&waiting, config("action=kbd")).expect("write");
    let mut a = Ember::spawn(&dir, "fc.sock", &["--config-file", s(&waiting)]);
    assert_eq!(a.state(), "Running");
    let (_, cfg) = a.request("GET", "/vm/config", None);
    assert!(cfg.contains("action=kbd"), "{cfg}");
    let deadline = Instant::now() + T;
    while a
        .request(
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        )
        .0
        != 204
    {
        assert!(Instant::now() < deadline, "the keyboard never became ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(a.wait(T).code(), Some(77));
    // A section Ember has no device for: one line, exit 1.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {"network_interfaces": ["eth0"]}}"#,
    )
    .expect("write");
    let mut e = Ember::spawn_args(&["--no-api", "--config-file", s(&bad)]);
    assert_eq!(e.wait(T).code(), Some(1));
    assert_eq!(
        e.stderr().trim(),
        "ember: the mmds-config section is not supported by Ember"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_socket_must_not_exist_and_a_signal_before_the_start_ends_the_process() {
    let dir = scratch("sock");
    let sock = dir.join("taken.sock");
    std::fs::write(&sock, b"").expect("file");
    let mut e = Ember::spawn_args(&["--api-sock", s(&sock)]);
    assert_eq!(e.wait(T).code(), Some(1));
    let err = e.stderr();
    assert!(
        err.starts_with("ember: Failed to bind the API socket"),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(sock.exists(), "someone else's file is left alone");
    // Before any VM, SIGTERM ends the process (128+15) and removes the socket.
    let mut e = Ember::spawn(&dir, "fc.sock", &[]);
    assert_eq!(e.state(), "Not started");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(e.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(e.wait(T).code(), Some(128 + libc::SIGTERM));
    assert!(!dir.join("fc.sock").exists());
    // Usage errors.
    let mut e = Ember::spawn_args(&["--config-file", "/x.json"]);
    assert_eq!(e.wait(T).code(), Some(2));
    let mut e = Ember::spawn_args(&["--api-sock", "/tmp/x.sock", "--kernel", "/k"]);
    assert_eq!(e.wait(T).code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}
