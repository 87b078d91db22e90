//! Host-side faults: SIGKILL during a guest's write-and-flush loop loses no write the guest
//! saw flushed; SIGTERM stops the guest cleanly with status 143 and the same guarantee; an
//! image that shrinks under a running guest gives it I/O errors, not a VMM crash.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{blk_guest, blk_pattern, ember_bin, require_kvm, sparse_file};

fn spawn(args: &[&str]) -> Child {
    Command::new(ember_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Reads console lines until `stop` says so; returns the lines seen.
fn read_until(child: &mut Child, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    for line in BufReader::new(out).lines() {
        let line = line.expect("console");
        let done = stop(&line);
        lines.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    lines
}

fn last_flushed(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("flushed ")?.parse().ok())
}

fn check_flushed_blocks(image: &std::path::Path, upto: u64) {
    let data = std::fs::read(image).expect("image");
    for i in 0..=upto {
        let block = &data[(i * 4096) as usize..((i + 1) * 4096) as usize];
        assert!(
            block == &blk_pattern((i + 1) as u32, 4096)[..],
            "flushed block {i} is not on disk"
        );
    }
}

fn flush_loop_then(
    signal: libc::c_int,
    name: &str,
) -> (std::process::ExitStatus, u64, std::path::PathBuf) {
    let img = sparse_file(name, 8 << 20);
    let kernel = blk_guest().to_str().expect("utf-8").to_string();
    let mut child = spawn(&[
        "--kernel",
        &kernel,
        "--memory",
        "64M",
        "--cmdline",
        "action=flushloop count=2000",
        "--disk",
        img.to_str().expect("utf-8"),
    ]);
    let pid = child.id() as i32;
    let mut signalled = false;
    let lines = read_until(&mut child, |l| {
        if !signalled
            && l.strip_prefix("flushed ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 20)
        {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, signal) };
            signalled = true;
        }
        false
    });
    let status = common::wait_within(&mut child, common::WAIT_LIMIT);
    let upto = last_flushed(&lines).expect("the guest flushed");
    assert!(upto >= 20, "{lines:?}");
    (status, upto, img)
}

#[test]
fn sigkill_loses_no_flushed_write() {
    if !require_kvm() {
        return;
    }
    let (status, upto, img) = flush_loop_then(libc::SIGKILL, "sigkill.img");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    check_flushed_blocks(&img, upto);
    let _ = std::fs::remove_file(img);
}

#[test]
fn sigterm_stops_cleanly_and_keeps_flushed_writes() {
    if !require_kvm() {
        return;
    }
    let (status, upto, img) = flush_loop_then(libc::SIGTERM, "sigterm.img");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    check_flushed_blocks(&img, upto);
    let _ = std::fs::remove_file(img);
}

#[test]
fn a_shrinking_image_gives_the_guest_io_errors() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("shrink.img", 1 << 20);
    let kernel = blk_guest().to_str().expect("utf-8").to_string();
    let mut child = spawn(&[
        "--kernel",
        &kernel,
        "--memory",
        "64M",
        "--cmdline",
        "action=readloop",
        "--disk",
        img.to_str().expect("utf-8"),
    ]);
    let mut shrunk = false;
    let path = img.clone();
    let lines = read_until(&mut child, |l| {
        if !shrunk && l.starts_with("readloop 5 status=0") {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .expect("shrink");
            shrunk = true;
        }
        l.contains("status=1")
    });
    let status = common::wait_within(&mut child, common::WAIT_LIMIT);
    assert!(
        lines.last().is_some_and(|l| l.ends_with("status=1")),
        "{lines:?}"
    );
    assert_eq!(status.code(), Some(0), "the VM ends normally");
    let _ = std::fs::remove_file(img);
}

/// A pipe: (read end, write end).
fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just opened.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// How long a stop may take before the test calls it a hang (the issue asks for a second; the
/// margin is for a loaded 2-core machine, a hang is forever).
const STOP_LIMIT: Duration = Duration::from_secs(3);

#[test]
fn sigterm_kill_and_stop_end_a_vm_whose_console_nobody_reads_with_input_pending() {
    // The guest prints far more than a pipe holds and nobody reads it, while console input
    // waits to be delivered. No vCPU may be stuck in a host write: guest output goes to a
    // bounded buffer, the UART shows the guest a busy transmitter, and every way of stopping
    // the VM ends it at once.
    if !require_kvm() {
        return;
    }
    let kernel = common::tiny_guest();
    let kernel_s = kernel.to_str().expect("utf-8").to_string();
    let mut child = Command::new(ember_bin())
        .args(["--kernel", &kernel_s, "--cmdline", "action=pattern:1000000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, &[b'x'; 4096]).expect("input");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().expect("wait").is_none(), "still printing");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = status.expect("ember hung on its blocked console after SIGTERM");
    assert!(t.elapsed() < STOP_LIMIT, "SIGTERM took {:?}", t.elapsed());
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");

    // The library: kill() and stop(), with a pipe nobody reads as the console.
    for how in ["kill", "stop"] {
        let (_unread, w) = pipe();
        let config = vmm::VmConfig::builder(kernel)
            .cmdline("action=pattern:1000000")
            .memory_mib(64)
            .build()
            .expect("config");
        let console = vmm::Console {
            output: vmm::ConsoleOutput::File(w),
            input: vmm::ConsoleInput::Pipe,
        };
        let mut vm = vmm::Vm::start_with_console(config, console).expect("start");
        let mut input = vm.console_input().expect("input pipe");
        std::io::Write::write_all(&mut input, &[b'y'; 4096]).expect("input");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!vm.has_ended(), "still printing");
        let t = Instant::now();
        let exit = if how == "kill" {
            vm.kill()
        } else {
            vm.stop(Duration::from_secs(1))
        };
        assert!(t.elapsed() < STOP_LIMIT, "{how} took {:?}", t.elapsed());
        assert_eq!(exit.reason, vmm::ExitReason::Stopped, "{how}");
    }
}
