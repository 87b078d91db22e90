//! The bodies of Ember's fuzz targets, shared by the cargo-fuzz binaries (fuzz_targets/) and
//! by the regression test that replays the seed corpora under `cargo test`
//! (tests/fuzz_corpora.rs). Each takes arbitrary bytes and must never panic, hang or touch
//! memory outside what it was given.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::virtio::block::{Disk, VirtioBlock};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::{GuestMemoryMmap, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 1 << 20;

/// An anonymous in-memory file holding `data`, and a path that opens it.
fn memfd(data: &[u8]) -> (File, PathBuf) {
    // SAFETY: the name is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ember-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and is owned here only.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data).expect("memfd write");
    let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    (f, path)
}

fn disk(read_only: bool) -> (Disk, File) {
    let (f, path) = memfd(&vec![0x5a; 64 * 1024]);
    (Disk::open(&path, read_only, "fuzz").expect("disk"), f)
}

fn memory(image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image");
    mem
}

/// virtio-blk request path: guest memory (rings, descriptors, headers, data) from the input,
/// a queue of the size the first byte picks, then the device serves it.
pub fn virtio_blk(data: &[u8]) {
    let Some((&sel, image)) = data.split_first() else {
        return;
    };
    let mem = memory(image);
    let (d, _f) = disk(sel & 0x80 != 0);
    let mut block = VirtioBlock::new(d, mem.clone());
    let size = 1u16 << (sel & 0x7).min(7);
    let Ok(mut q) = Queue::new(256) else { return };
    q.set_size(size);
    q.set_desc_table_address(Some(0x0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let features = if sel & 0x40 != 0 {
        (1u64 << 32) | (1 << 29)
    } else {
        1 << 32
    };
    if block
        .activate(features, vec![q], VirtioInterrupt::new(irq))
        .is_err()
    {
        return;
    }
    for _ in 0..4 {
        if !block.process_queue() {
            break;
        }
    }
}

/// The virtio-mmio register interface: a sequence of reads and writes of any width at any
/// offset of the 4 KiB window, with queue notifications served as they come.
pub fn virtio_mmio(data: &[u8]) {
    let mem = memory(&[]);
    let (d, _f) = disk(false);
    let block = Arc::new(Mutex::new(VirtioBlock::new(d, mem.clone())));
    let dev: Arc<Mutex<dyn VirtioDevice>> = block.clone();
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let kick = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(
        dev,
        mem.clone(),
        VirtioInterrupt::new(irq),
        vec![kick.try_clone().expect("clone")],
    );
    for op in data.chunks(7) {
        if op.len() < 7 {
            break;
        }
        let kind = op[0];
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1fff);
        let width = [1usize, 2, 4, 8][usize::from((kind >> 1) & 3)];
        let value = [op[3], op[4], op[5], op[6], op[3], op[4], op[5], op[6]];
        if kind & 1 == 0 {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        } else {
            t.write(offset, &value[..width]);
        }
        if kind & 0x80 != 0 {
            // Let the guest's rings live in the memory it points the queue at.
            let _ = mem.write_slice(&op[3..], GuestAddress(u64::from(op[1]) << 8));
        }
        if kick.read().is_ok() {
            block.lock().expect("lock").process_queue();
        }
    }
}

/// The 16550 UART: register reads and writes and host input.
pub fn serial(data: &[u8]) {
    struct Sink;
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let Ok((mut s, _drained)) =
        devices::legacy::Serial::new(devices::EventFdTrigger::new(irq), Sink)
    else {
        return;
    };
    for op in data.chunks(3) {
        if op.len() < 3 {
            break;
        }
        match op[0] % 3 {
            0 => s.write(u64::from(op[1]), &[op[2]]),
            1 => {
                let mut b = [0u8];
                s.read(u64::from(op[1]), &mut b);
            }
            _ => {
                s.enqueue_input(&op[1..]);
            }
        }
    }
}

/// Kernel image loading (ELF, bzImage, anything else) into a small guest.
pub fn kernel_loader(data: &[u8]) {
    let mem = vmm::memory::create_guest_memory(32 << 20).expect("memory");
    let (_f, path) = memfd(data);
    if let Ok(k) = vmm::boot::load_kernel(&mem, &path) {
        let _ = vmm::boot::write_boot_structures(&mem, 32 << 20, 2, &k, "console=ttyS0", None);
    }
}

/// The configuration parsers: JSON, memory sizes, disk specifications.
pub fn config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = vmm::VmConfig::from_json(s) {
        let _ = c.validate();
    }
    let _ = vmm::parse_memory_size(s);
    let _ = vmm::DiskConfig::parse(s);
    if let Some(argv) = s.strip_prefix("cmd:") {
        let argv: Vec<String> = argv.split('\u{1}').map(str::to_string).collect();
        if let Ok(p) = vmm::command::encode(&argv) {
            assert_eq!(
                vmm::command::decode(&p[vmm::command::PARAM.len()..]),
                Some(argv)
            );
        }
    }
}
