//! Resource ownership, in a test process of its own so that no other test's threads or file
//! descriptors disturb the counts: configuration errors come back before any thread starts,
//! and 50 start/stop cycles leave no thread or file descriptor behind.

mod common;

use std::time::Duration;

use common::{require_kvm, tiny_guest};
use vmm::{ConfigError, Error, ExitReason, PvmMode, Vm, VmConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// The thread count once it is at most `limit`, or after 2 s. A joined thread can still be
/// listed for a moment (pthread_join returns when the kernel clears the thread's id, a little
/// before it removes the task), so a leak is what stays.
fn threads_settled_to(limit: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n = threads();
        if n <= limit || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn errors_come_early_and_nothing_leaks() {
    if !require_kvm() {
        return;
    }
    let kernel = tiny_guest().to_path_buf();
    // Warm up once: the kick-signal handler and lazily built statics are process-wide.
    let mut warm = Vm::start(
        VmConfig::builder(&kernel)
            .cmdline("action=exit:0")
            .pvm(PvmMode::Off)
            .build()
            .expect("valid"),
    )
    .expect("start");
    assert_eq!(
        common::vm_wait(&mut warm, common::WAIT_LIMIT).reason,
        ExitReason::Status(0)
    );
    drop(warm);
    // The warm-up VM's threads gone from the task list (see threads_settled_to).
    std::thread::sleep(Duration::from_millis(200));
    let (fds, tasks) = (open_fds(), threads());

    // Configuration errors: typed, and no thread was started for them.
    let missing = Vm::start(VmConfig::new("/nonexistent/vmlinux"));
    assert!(matches!(
        missing,
        Err(Error::Config(ConfigError::Kernel { .. }))
    ));
    let zero = Vm::start(VmConfig {
        memory: 0,
        ..VmConfig::new(&kernel)
    });
    assert!(matches!(
        zero,
        Err(Error::Config(ConfigError::MemoryTooSmall(0)))
    ));
    let json = VmConfig::from_json(&format!(
        r#"{{"kernel": "{}", "bogus": 1}}"#,
        kernel.display()
    ));
    assert!(matches!(json, Err(ConfigError::Json(_))));
    let bad_kernel = Vm::start(VmConfig::new("/proc/self/status"));
    assert!(matches!(bad_kernel, Err(Error::Boot(_))), "{bad_kernel:?}");
    assert_eq!(threads(), tasks);
    assert_eq!(open_fds(), fds);

    for i in 0..50 {
        let action = match i % 3 {
            0 => "action=exit:3",
            1 => "action=loop",
            _ => "action=halt",
        };
        let cfg = VmConfig::builder(&kernel)
            .cmdline(action)
            .memory_mib(16)
            .vcpus(1 + (i % 2) as u8)
            .pvm(PvmMode::Off)
            .build()
            .expect("valid");
        let mut h = Vm::start(cfg).expect("start");
        match i % 3 {
            0 => assert_eq!(
                common::vm_wait(&mut h, common::WAIT_LIMIT).reason,
                ExitReason::Status(3)
            ),
            1 => assert_eq!(h.kill().reason, ExitReason::Stopped),
            _ => {
                // Dropping the handle stops the VM too.
                assert!(h.wait_timeout(Duration::from_millis(5)).is_none());
            }
        }
        drop(h);
    }
    assert_eq!(threads_settled_to(tasks), tasks, "threads leaked");
    assert_eq!(open_fds(), fds, "file descriptors leaked");
}
