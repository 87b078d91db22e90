//! A hostile guest (tests/guests/blk.c, `action=hostile`) scribbles over every I/O port, the
//! MMIO gap and every register, queue and ring of two virtio-blk devices: bogus ring
//! addresses, descriptor cycles, absurd lengths, queue sizes that are not powers of two,
//! notifications of queues that do not exist, status writes out of order, accesses past the
//! register file. Ember must keep serving: after a reset each disk answers a well-formed
//! read with the right data, the VM ends normally, nothing panics and the log stays short.

mod common;

use std::time::Duration;

use common::{blk_guest, blk_pattern, fnv1a64, require_kvm, run_ember, sparse_file};

#[test]
fn hostile_guest_cannot_break_the_devices() {
    if !require_kvm() {
        return;
    }
    let a = sparse_file("hostile-a.img", 1 << 20);
    let b = sparse_file("hostile-b.img", 2 << 20);
    let content = blk_pattern(42, 4096);
    let mut data = std::fs::read(&b).expect("image");
    data[..4096].copy_from_slice(&content);
    std::fs::write(&b, &data).expect("write");
    let kernel = blk_guest().to_str().expect("utf-8").to_string();
    let r = run_ember(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--cmdline",
            "action=hostile",
            "--disk",
            a.to_str().expect("utf-8"),
            "--disk",
            b.to_str().expect("utf-8"),
        ],
        b"",
        Duration::from_secs(300),
    );
    assert!(!r.timed_out, "Ember hung: {r:?}");
    assert_eq!(r.code(), 0, "{r:?}");
    let zero = fnv1a64(&[0u8; 4096]);
    assert!(
        r.stdout
            .contains(&format!("hostile: disk0 good status=0 fnv1a64={zero:016x}")),
        "{}",
        r.stdout
    );
    let want = fnv1a64(&content);
    assert!(
        r.stdout
            .contains(&format!("hostile: disk1 good status=0 fnv1a64={want:016x}")),
        "{}",
        r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr.lines().count() < 40,
        "the guest flooded the log:\n{}",
        r.stderr
    );
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
}
