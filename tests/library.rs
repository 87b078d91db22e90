//! The `vmm` crate as a library: many VMs in one process, each with its own console and exit
//! status; stop, kill and wait with timeouts; console input through a pipe.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{require_kvm, tiny_guest};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitReason, PvmMode, Vm, VmConfig};

fn config(cmdline: &str) -> VmConfig {
    VmConfig::builder(tiny_guest())
        .cmdline(cmdline)
        .memory_mib(32)
        .pvm(PvmMode::Off)
        .build()
        .expect("valid config")
}

fn start(cmdline: &str) -> (vmm::VmHandle, Capture) {
    let capture = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(capture.clone()),
        input: ConsoleInput::None,
    };
    let handle = Vm::start_with_console(config(cmdline), console).expect("start");
    (handle, capture)
}

#[test]
fn sixteen_concurrent_vms_keep_their_own_output_and_status() {
    if !require_kvm() {
        return;
    }
    let vms: Vec<_> = (0..16u8)
        .map(|i| {
            let cmdline = format!(
                "action=print say=vm-{i}-first say=vm-{i}-second status={}",
                100 + i
            );
            (i, start(&cmdline))
        })
        .collect();
    for (i, (mut handle, capture)) in vms {
        let exit = common::vm_wait(&mut handle, common::WAIT_LIMIT);
        assert_eq!(exit.reason, ExitReason::Status(100 + i));
        assert_eq!(capture.text(), format!("vm-{i}-first\nvm-{i}-second\n"));
    }
}

#[test]
fn stop_forces_a_guest_that_ignores_the_request() {
    if !require_kvm() {
        return;
    }
    let (mut handle, capture) = start("action=loop");
    while !capture.text().contains("looping") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let exit = handle.stop(Duration::from_millis(1500));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(exit.reason, ExitReason::Stopped);
}

#[test]
fn stop_asks_the_guest_first() {
    if !require_kvm() {
        return;
    }
    let (mut handle, capture) = start("action=kbd");
    while !capture.text().contains("waiting") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let exit = handle.stop(Duration::from_secs(5));
    assert_eq!(exit.reason, ExitReason::Status(77), "{}", capture.text());
    assert!(capture.text().contains("tiny: ctrl-alt-del"));
}

#[test]
fn kill_stops_a_spinning_multi_vcpu_guest_at_once() {
    if !require_kvm() {
        return;
    }
    let cfg = VmConfig {
        vcpus: 2,
        ..config("action=loop")
    };
    let capture = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(capture.clone()),
        input: ConsoleInput::None,
    };
    let mut handle = Vm::start_with_console(cfg, console).expect("start");
    while !capture.text().contains("looping") {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let exit = handle.kill();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "kill took {:?}",
        t.elapsed()
    );
    assert_eq!(exit.reason, ExitReason::Stopped);
}

#[test]
fn wait_timeout_does_not_stop_the_vm() {
    if !require_kvm() {
        return;
    }
    let (mut handle, _capture) = start("action=loop");
    let t = Instant::now();
    assert!(handle.wait_timeout(Duration::from_millis(200)).is_none());
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(!handle.has_ended());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!handle.has_ended(), "still running after the timeout");
    assert_eq!(handle.kill().reason, ExitReason::Stopped);
    let (mut quick, _) = start("action=exit:5");
    let exit = quick
        .wait_timeout(Duration::from_secs(10))
        .expect("ends in time");
    assert_eq!(exit.reason, ExitReason::Status(5));
}

#[test]
fn console_input_through_a_pipe() {
    if !require_kvm() {
        return;
    }
    let capture = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(capture.clone()),
        input: ConsoleInput::Pipe,
    };
    let mut handle = Vm::start_with_console(config("action=echo:5"), console).expect("start");
    let mut input = handle.console_input().expect("pipe writer");
    input.write_all(b"hello").expect("write");
    let exit = handle.wait_timeout(Duration::from_secs(10)).expect("ends");
    assert_eq!(exit.reason, ExitReason::Status(0));
    assert_eq!(capture.text(), "tiny: ready\nhello\ntiny: echoed\n");
}

#[test]
fn exit_reasons_and_timestamps() {
    if !require_kvm() {
        return;
    }
    let (mut h, _) = start("action=triplefault");
    assert_eq!(
        common::vm_wait(&mut h, common::WAIT_LIMIT).reason,
        ExitReason::TripleFault { vcpu: 0 }
    );
    let (mut h, _) = start("action=reset");
    let exit = common::vm_wait(&mut h, common::WAIT_LIMIT);
    assert_eq!(exit.reason, ExitReason::Reset);
    let t = exit.timestamps;
    let first = t.first_run.expect("the guest ran");
    assert!(t.start <= t.config_validated && t.config_validated <= t.memory_ready);
    assert!(t.memory_ready <= t.kernel_loaded && t.kernel_loaded <= first && first <= t.exit);
}

#[test]
fn a_child_spawned_while_vms_run_inherits_none_of_their_descriptors() {
    if !require_kvm() {
        return;
    }
    let baseline = inherited_fds();
    // Two VMs with every kind of descriptor: KVM, eventfds (irqfds, ioeventfds, kicks), the
    // event loop's epoll, console pipes, a disk image.
    let disk = common::sparse_file("cloexec-disk.img", 1 << 20);
    let mut vms = Vec::new();
    for _ in 0..2 {
        let config = VmConfig::builder(tiny_guest())
            .cmdline("action=loop")
            .memory_mib(32)
            .disk(&disk, true)
            .build()
            .expect("config");
        let console = Console {
            output: ConsoleOutput::Capture(Capture::default()),
            input: ConsoleInput::Pipe,
        };
        vms.push(Vm::start_with_console(config, console).expect("start"));
    }
    let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        ours.iter().any(|p| p.contains("kvm")) && ours.iter().any(|p| p.contains("eventfd")),
        "the VMs' descriptors are open here: {ours:?}"
    );
    // What a child inherits now, against what it inherited before any VM ran (the test
    // harness may pass on descriptors of its own).
    let inherited = inherited_fds();
    let leaked: Vec<&String> = inherited.iter().filter(|f| !baseline.contains(f)).collect();
    let info: Vec<String> = leaked
        .iter()
        .filter_map(|l| {
            let fd = l.split(' ').next()?;
            std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "a child inherits the VMs' {leaked:?}: {info:?}"
    );
    for mut vm in vms {
        vm.kill();
    }
    let _ = std::fs::remove_file(disk);
}

/// The descriptors a child process holds (`ls -l /proc/self/fd` in the child), as
/// "number -> target", without the one `ls` reads the listing with.
fn inherited_fds() -> Vec<String> {
    let out = std::process::Command::new("ls")
        .args(["-l", "/proc/self/fd/"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.find(" -> ")
                .map(|i| l[..i].rsplit(' ').next().unwrap_or("").to_string() + &l[i..])
        })
        .filter(|l| !l.contains("/proc/"))
        .filter(|l| !(l.starts_with("0 ") || l.starts_with("1 ") || l.starts_with("2 ")))
        .collect()
}
