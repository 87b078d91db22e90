//! A running VM's life, with tiny guests: pause and resume continue the guest exactly, pausing
//! over and over on 4 vCPUs with disk I/O in flight loses no request, and stopping ends every
//! vCPU with one kick each.

mod common;

use std::time::{Duration, Instant};

use common::{blk_guest, blk_pattern, require_kvm, sparse_file, tiny_guest};
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, ExitReason, Vm, VmConfig, VmHandle};

const T: Duration = Duration::from_secs(120);

fn start(
    kernel: &std::path::Path,
    cmdline: &str,
    vcpus: u8,
    disk: Option<&std::path::Path>,
) -> (VmHandle, Capture) {
    let mut b = VmConfig::builder(kernel)
        .cmdline(cmdline)
        .memory_mib(64)
        .vcpus(vcpus);
    if let Some(d) = disk {
        b = b.disk(d, false);
    }
    let out = Capture::default();
    let console = Console {
        output: ConsoleOutput::Capture(out.clone()),
        input: ConsoleInput::None,
    };
    let vm = Vm::start_with_console(b.build().expect("config"), console).expect("start");
    (vm, out)
}

fn wait_until(what: &str, deadline: Instant, mut f: impl FnMut() -> bool) {
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pause_holds_the_guest_still_and_resume_continues_it_without_a_gap_or_a_repeat() {
    if !require_kvm() {
        return;
    }
    const N: usize = 3000;
    let (mut vm, out) = start(tiny_guest(), &format!("action=pattern:{N}"), 1, None);
    let deadline = Instant::now() + T;
    wait_until("the first lines", deadline, || {
        out.text().lines().count() > 20
    });
    vm.pause().expect("pause");
    assert!(vm.is_paused());
    let at_pause = out.contents().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(out.contents().len(), at_pause, "the guest ran while paused");
    assert!(
        out.text().lines().count() < N,
        "the guest finished before the pause: make N larger"
    );
    vm.resume();
    assert!(!vm.is_paused());
    let exit = vm.wait_timeout(T).expect("the guest ends");
    assert_eq!(exit.reason, ExitReason::Status(0));
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), N, "a line was lost or repeated");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            *l,
            format!("line {i}: the quick brown fox jumps over the lazy dog"),
            "line {i}"
        );
    }
}

#[test]
fn a_hundred_pauses_on_four_vcpus_with_disk_io_in_flight_lose_no_request() {
    if !require_kvm() {
        return;
    }
    const COUNT: usize = 200;
    let disk = sparse_file("pause-flushloop.img", 4 << 20);
    let (mut vm, out) = start(
        blk_guest(),
        &format!("action=flushloop count={COUNT}"),
        4,
        Some(&disk),
    );
    let deadline = Instant::now() + T;
    wait_until("the first flush", deadline, || {
        out.text().contains("flushed 0\n")
    });
    let mut cycles = 0;
    while cycles < 100 && !vm.has_ended() {
        if vm.pause().is_err() {
            break; // the guest finished meanwhile
        }
        vm.resume();
        cycles += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    let exit = vm.wait_timeout(T).expect("the guest ends");
    assert_eq!(exit.reason, ExitReason::Status(0), "{}", out.text());
    assert_eq!(
        cycles, 100,
        "the guest ended after {cycles} cycles: make COUNT larger"
    );
    let text = out.text();
    let flushed: Vec<&str> = text.lines().filter(|l| l.starts_with("flushed ")).collect();
    let want: Vec<String> = (0..COUNT).map(|i| format!("flushed {i}")).collect();
    assert_eq!(flushed, want, "every request completes once, in order");
    let data = std::fs::read(&disk).expect("image");
    for i in 0..COUNT {
        assert_eq!(
            &data[i * 4096..(i + 1) * 4096],
            &blk_pattern(i as u32 + 1, 4096)[..],
            "block {i} on the host"
        );
    }
    let _ = std::fs::remove_file(disk);
}

#[test]
fn pausing_an_ended_vm_fails_and_a_paused_vm_can_be_killed() {
    if !require_kvm() {
        return;
    }
    let (mut vm, _) = start(tiny_guest(), "action=loop", 2, None);
    vm.pause().expect("pause");
    let exit = vm.kill();
    assert_eq!(exit.reason, ExitReason::Stopped);
    assert_eq!(vm.pause(), Err(vmm::PauseError::Ended));
}

#[test]
fn kill_stops_254_spinning_vcpus_with_one_kick_each() {
    if !require_kvm() {
        return;
    }
    // The boot processor spins in the guest; the others wait for a start-up IPI inside
    // KVM_RUN. Every one must leave on its single kick.
    let (mut vm, out) = start(tiny_guest(), "action=loop", 254, None);
    let deadline = Instant::now() + T;
    wait_until("the guest to loop", deadline, || {
        out.text().contains("tiny: looping")
    });
    let exit = vm.kill();
    assert_eq!(exit.reason, ExitReason::Stopped);
}
