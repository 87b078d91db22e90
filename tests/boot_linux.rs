//! Boots the project's real Linux kernel (resources/kernel) and checks what its log proves:
//! both image formats reach init, SMP, memory size, virtio-blk disks and the root filesystem,
//! and the init's own first line. Guest user space as users see it is in tests/user_space.rs.
//! Kept to a few boots: under kvm-pvm each takes tens of seconds.

mod common;

use std::time::Duration;

use common::{
    copy_to_temp, guest_initramfs, guest_kernel, guest_rootfs, require_kvm, run_ember, sparse_file,
    Run,
};

const T: Duration = Duration::from_secs(900);

/// One Linux test of this file at a time: under kvm-pvm's instruction emulator, more guests
/// than cores slow each other down far more than in proportion (seen here: seven guests on two
/// cores took over 15 minutes to boot, one alone 50 s).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}
const RUN_INIT: &str = "Run /init as init process";

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The total RAM Linux reports, in KiB: "Memory: 1001172K/1048052K available".
fn reported_memory_kib(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("Memory: ") && l.contains("K available"))?;
    let after = &line[line.find("Memory: ")? + 8..];
    let total = after.split('/').nth(1)?;
    total
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .split('K')
        .next()?
        .parse()
        .ok()
}

/// The project's init ran: its first line is on the console. With the project's kernel guest
/// user space runs on every host, kvm-pvm included (the kernel finishes the half-done SYSCALL).
fn check_init(r: &Run) {
    assert!(
        r.stdout.contains("ember-init: ready"),
        "init did not run:\n{}",
        r.stdout
    );
}

/// `--boot-timer`: every observable phase, in increasing time order, none negative, the
/// console marker included.
fn check_boot_timer_table(stderr: &str) {
    let rows: Vec<(String, f64, f64)> = stderr
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("ember:   ")?;
            let mut it = l.split_whitespace().rev();
            let delta: f64 = it.next()?.parse().ok()?;
            let at: f64 = it.next()?.parse().ok()?;
            Some((
                l[..l.find(|c: char| c.is_ascii_digit())?]
                    .trim()
                    .to_string(),
                at,
                delta,
            ))
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    // The table lists phases sorted by time, so their order must be the order in which they
    // can happen: a timestamp taken at the wrong moment shows up as a name out of place. The
    // init pokes the boot timer after "Run /init" (the marker) and before the command ends.
    assert_eq!(
        names,
        [
            "process start",
            "configuration validated",
            "guest memory ready",
            "kernel and initramfs loaded",
            "first KVM_RUN",
            "first console output",
            "console marker",
            "boot-timer signal",
            "stop requested",
            "VM exit",
        ],
        "phases missing or out of causal order:\n{stderr}"
    );
    // Each row's "since previous" is the difference of the "since start" column.
    for w in rows.windows(2) {
        assert!(w[1].1 >= w[0].1, "phases out of order:\n{stderr}");
        assert!(
            ((w[1].1 - w[0].1) - w[1].2).abs() < 0.01,
            "row {} does not add up:\n{stderr}",
            w[1].0
        );
    }
    assert_eq!(rows[0].1, 0.0, "{stderr}");
}

fn assert_memory_close(r: &Run, mib: u64) {
    let kib = reported_memory_kib(&r.stdout).expect("the kernel reports its memory");
    let want = mib * 1024;
    let diff = (kib as f64 - want as f64).abs() / want as f64;
    assert!(
        diff < 0.05,
        "kernel sees {kib} KiB for {mib} MiB ({:.1}% off)",
        diff * 100.0
    );
}

#[test]
fn vmlinux_smp_boots_to_init_and_times_every_phase() {
    if !require_kvm() {
        return;
    }
    let _one = one_at_a_time();
    let (vmlinux, _) = guest_kernel();
    let r = run_ember(
        &[
            "--kernel",
            s(vmlinux),
            "--initrd",
            s(guest_initramfs()),
            "--cpus",
            "4",
            "--memory",
            "1G",
            "--boot-timer",
            "--boot-timer-marker",
            RUN_INIT,
            "--",
            "true",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "boot hung:\n{}", r.stdout);
    assert!(
        r.stdout.contains(RUN_INIT),
        "no init:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("smp: Brought up 1 node, 4 CPUs"),
        "{}",
        r.stdout
    );
    assert_memory_close(&r, 1024);
    check_boot_timer_table(&r.stderr);
    check_init(&r);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(!r.stdout.contains("Kernel panic"), "{}", r.stdout);
}

#[test]
fn bzimage_boots_to_init_with_4g() {
    if !require_kvm() {
        return;
    }
    let _one = one_at_a_time();
    let (_, bzimage) = guest_kernel();
    let r = run_ember(
        &[
            "--kernel",
            s(bzimage),
            "--initrd",
            s(guest_initramfs()),
            "--memory",
            "4G",
            "--",
            "true",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "boot hung:\n{}", r.stdout);
    assert!(
        r.stdout.contains(RUN_INIT),
        "no init:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_memory_close(&r, 4096);
    check_init(&r);
    assert_eq!(r.code(), 0, "{}", r.stderr);
}

fn ext4_mount_count(image: &std::path::Path) -> u16 {
    let data = std::fs::read(image).expect("image");
    // The superblock starts at byte 1024; s_mnt_count is at offset 0x34 in it.
    u16::from_le_bytes([data[1024 + 0x34], data[1024 + 0x35]])
}

#[test]
fn linux_mounts_a_read_write_root_and_sees_two_disks() {
    if !require_kvm() {
        return;
    }
    let _one = one_at_a_time();
    let (vmlinux, _) = guest_kernel();
    let root = copy_to_temp(guest_rootfs(), "rw-root.ext4");
    let data = sparse_file("data.img", 32 << 20);
    let before = ext4_mount_count(&root);
    let r = run_ember(
        &[
            "--kernel",
            s(vmlinux),
            "--disk",
            s(&root),
            "--disk",
            &format!("{},ro", s(&data)),
            "--",
            "true",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "boot hung:\n{}", r.stdout);
    let root_sectors = std::fs::metadata(&root).expect("root").len() / 512;
    assert!(
        r.stdout
            .contains(&format!("[vda] {root_sectors} 512-byte logical blocks")),
        "vda capacity:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("[vdb] 65536 512-byte logical blocks"),
        "vdb capacity:\n{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("VFS: Mounted root (ext4 filesystem) on device"),
        "{}",
        r.stdout
    );
    check_init(&r);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(
        ext4_mount_count(&root) > before,
        "the guest's superblock update is not on the host"
    );
    let _ = std::fs::remove_file(root);
    let _ = std::fs::remove_file(data);
}

#[test]
fn linux_mounts_a_read_only_root_read_only() {
    if !require_kvm() {
        return;
    }
    let _one = one_at_a_time();
    let (vmlinux, _) = guest_kernel();
    let root = copy_to_temp(guest_rootfs(), "ro-root.ext4");
    let before = std::fs::read(&root).expect("image");
    let r = run_ember(
        &[
            "--kernel",
            s(vmlinux),
            "--disk",
            &format!("{},ro", s(&root)),
            "--",
            "true",
        ],
        b"",
        T,
    );
    assert!(!r.timed_out, "boot hung:\n{}", r.stdout);
    assert!(
        r.stdout
            .contains("VFS: Mounted root (ext4 filesystem) readonly on device"),
        "{}",
        r.stdout
    );
    check_init(&r);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(
        std::fs::read(&root).expect("image") == before,
        "a read-only image changed"
    );
    let _ = std::fs::remove_file(root);
}

#[test]
fn memory_line_parses() {
    let log = "[    0.1] Memory: 1001172K/1048052K available (2048K kernel code, 1K rwdata)";
    assert_eq!(reported_memory_kib(log), Some(1048052));
    assert_eq!(reported_memory_kib("nothing"), None);
}

#[test]
fn three_concurrent_linux_boots_reach_init() {
    if !require_kvm() {
        return;
    }
    let _one = one_at_a_time();
    let (vmlinux, _) = guest_kernel();
    let initrd = guest_initramfs();
    // Three: more guests than cores, but not so many that the emulator crawls.
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(common::ember_bin())
                .args([
                    "--kernel",
                    vmlinux.to_str().expect("utf-8"),
                    "--initrd",
                    initrd.to_str().expect("utf-8"),
                    "--memory",
                    "128M",
                    "--",
                    "true",
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = common::output_within(child, T);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("ember-init: ready"), "{stdout}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_initramfs_where_the_bzimage_decompresses_is_refused() {
    // The project's bzImage decompresses itself into [16 MiB, 16 MiB + init_size); with 32 MiB
    // of RAM an 8 MiB initramfs placed at the top would land inside that range.
    if !require_kvm() {
        return;
    }
    let (_, bzimage) = guest_kernel();
    let initrd = sparse_file("big-initrd.img", 8 << 20);
    let r = run_ember(
        &[
            "--kernel",
            s(bzimage),
            "--initrd",
            s(&initrd),
            "--memory",
            "32M",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(
        r.stderr.contains("does not fit in guest memory"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stdout.contains("Linux version"),
        "the guest must not start"
    );
    let _ = std::fs::remove_file(initrd);
}
