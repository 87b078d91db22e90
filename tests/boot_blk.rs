//! virtio-blk end to end with the blk test guest (tests/guests/blk.c, its own polling
//! driver): data written and flushed by the guest is exactly on the host; data the host wrote
//! reads back exactly; GET_ID; read-only disks; malformed requests; image locking; interrupt
//! delivery through the I/O APIC.

mod common;

use std::time::Duration;

use common::{blk_guest, blk_pattern, fnv1a64, require_kvm, run_ember, sparse_file, Run};

const T: Duration = Duration::from_secs(300);

fn blk(cmdline: &str, disks: &[String]) -> Run {
    let kernel = blk_guest().to_str().expect("utf-8").to_string();
    let mut args = vec![
        "--kernel".to_string(),
        kernel,
        "--memory".into(),
        "64M".into(),
    ];
    args.push("--cmdline".into());
    args.push(cmdline.to_string());
    for d in disks {
        args.push("--disk".into());
        args.push(d.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ember(&refs, b"", T)
}

fn path(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

#[test]
fn guest_writes_16_mib_and_the_host_finds_exactly_that() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("write.img", 64 << 20);
    let seed = 0x5eed_0000 ^ std::process::id();
    let r = blk(
        &format!("action=write seed={seed} mib=16 offset=2048"),
        &[path(&img)],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout.contains("write: ok status=0"), "{}", r.stdout);
    let data = std::fs::read(&img).expect("image");
    let start = 2048 * 512;
    assert!(
        data[..start].iter().all(|&b| b == 0),
        "bytes before the region changed"
    );
    assert!(
        data[start..start + (16 << 20)] == blk_pattern(seed, 16 << 20)[..],
        "pattern differs"
    );
    assert!(
        data[start + (16 << 20)..].iter().all(|&b| b == 0),
        "bytes after the region changed"
    );
    let _ = std::fs::remove_file(img);
}

#[test]
fn guest_reads_what_the_host_wrote() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("read.img", 8 << 20);
    let content = blk_pattern(99, 512 << 10);
    let mut data = std::fs::read(&img).expect("image");
    data[4096..4096 + content.len()].copy_from_slice(&content);
    std::fs::write(&img, &data).expect("write image");
    let r = blk("action=read kib=512 offset=8", &[path(&img)]);
    assert_eq!(r.code(), 0, "{r:?}");
    let want = format!("read: fnv1a64={:016x}", fnv1a64(&content));
    assert!(r.stdout.contains(&want), "want {want}:\n{}", r.stdout);
    let _ = std::fs::remove_file(img);
}

#[test]
fn get_id_capacity_and_read_only_disks() {
    if !require_kvm() {
        return;
    }
    let a = sparse_file("info-a.img", 3 << 20);
    let b = sparse_file("info-b.img", (1 << 20) + 700); // a partial last sector is not exposed
    let r = blk(
        "action=info",
        &[
            format!("{},serial=disk-a-123", path(&a)),
            format!("{},ro", path(&b)),
        ],
    );
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(
        r.stdout
            .contains("disk0: capacity=6144 ro=0 serial=disk-a-123"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("disk1: capacity=2049 ro=1 serial=ember-vdb"),
        "{}",
        r.stdout
    );

    std::fs::write(&b, vec![0x5a; 1 << 20]).expect("fill");
    let before = std::fs::read(&b).expect("image");
    let r = blk("action=write seed=1 kib=64", &[format!("{},ro", path(&b))]);
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(
        r.stdout.contains("write: status=1"),
        "IOERR expected:\n{}",
        r.stdout
    );
    assert!(
        std::fs::read(&b).expect("image") == before,
        "a read-only image changed"
    );
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
}

#[test]
fn malformed_requests_fail_and_the_device_keeps_serving() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("badreq.img", 1 << 20);
    let r = blk("action=badreq", &[path(&img)]);
    assert_eq!(r.code(), 0, "{r:?}");
    for (name, status) in [
        ("short_header", 1),
        ("unknown_type", 2),
        ("bad_address", 1),
        ("beyond_capacity", 1),
        ("good", 0),
    ] {
        let line = format!("badreq: {name} status={status}");
        assert!(r.stdout.contains(&line), "want {line}:\n{}", r.stdout);
    }
    let _ = std::fs::remove_file(img);
}

#[test]
fn a_second_ember_cannot_open_a_locked_image() {
    if !require_kvm() {
        return;
    }
    let img = sparse_file("locked.img", 1 << 20);
    let tiny = common::tiny_guest().to_str().expect("utf-8").to_string();
    let mut first = std::process::Command::new(common::ember_bin())
        .args([
            "--kernel",
            &tiny,
            "--cmdline",
            "action=loop",
            "--disk",
            &path(&img),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = first.stdout.take().expect("stdout");
    let mut buf = [0u8; 14];
    std::io::Read::read_exact(&mut out, &mut buf).expect("first VM runs");
    for spec in [path(&img), format!("{},ro", path(&img))] {
        let r = run_ember(
            &[
                "--kernel",
                &tiny,
                "--cmdline",
                "action=exit:0",
                "--disk",
                &spec,
            ],
            b"",
            T,
        );
        assert_eq!(r.code(), 1, "{r:?}");
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains("locked"))
            .expect("a message about the lock");
        assert!(line.contains(&path(&img)), "{line}");
    }
    assert!(
        first.try_wait().expect("wait").is_none(),
        "the first VM must be unharmed"
    );
    first.kill().expect("kill");
    let _ = first.wait();
    // Once the first is gone, the image opens again.
    let r = run_ember(
        &[
            "--kernel",
            &tiny,
            "--cmdline",
            "action=exit:0",
            "--disk",
            &path(&img),
        ],
        b"",
        T,
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let _ = std::fs::remove_file(img);
}

#[test]
fn interrupts_reach_the_guest_through_the_ioapic() {
    // The blk guest with interrupts on: Ember's user-space I/O APIC identifies itself, keeps a
    // masked pin quiet, routes COM1's pin (edge, then level: its EOI exit is absorbed) and the
    // disk's completion (irqfd) to the vectors the guest programmed, and nothing else arrives.
    if !require_kvm() {
        return;
    }
    let img = sparse_file("irq.img", 1 << 20);
    let r = blk("action=irq", &[path(&img)]);
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("irq: "))
        .collect();
    assert_eq!(
        lines,
        [
            "irq: ioapic version=0x00170011",
            "irq: com1 masked count=0",
            "irq: com1 vector=0x40 count=1",
            "irq: com1 level count=2",
            "irq: disk0 vector=0x41 count=1 status=0",
            "irq: other=0",
        ],
        "{r:?}"
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let _ = std::fs::remove_file(img);
}
