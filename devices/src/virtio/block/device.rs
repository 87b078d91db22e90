//! The virtio-blk device model: features, configuration space, and the queue processing the
//! [`super::BlockHandler`] runs on the event-loop thread when the guest notifies.

use std::sync::atomic::Ordering;

use log::{debug, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::disk::Disk;
use super::request::{execute, parse, Parsed, Segment, MAX_DESCRIPTORS};
use super::QUEUE_SIZE;
use crate::virtio::{
    ActivateError, GuestMemoryMmap, VirtioDevice, VirtioInterrupt, INT_CONFIG, INT_VRING,
};

/// Configuration space length exposed (capacity, size_max, seg_max).
const CONFIG_LEN: usize = 16;

struct Active {
    queue: Queue,
    interrupt: VirtioInterrupt,
    /// The driver did not negotiate FLUSH: writes are made durable before they complete.
    write_through: bool,
}

/// Data bytes one notification serves before the event loop gets back to other devices.
const BATCH_BYTES: u64 = 8 << 20;

/// A virtio-blk device's state as plain data: its disk's identity (checked on restore, the
/// image itself is the user's) and, while the driver uses it, its request queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    /// The image's path.
    pub path: std::path::PathBuf,
    /// Its capacity in sectors when saved.
    pub sectors: u64,
    /// Whether the guest saw it read-only.
    pub read_only: bool,
    /// Its GET_ID serial.
    pub serial: String,
    /// The request queue while active.
    pub queue: Option<crate::virtio::QueueSnapshot>,
    /// Writes are synced before they complete (FLUSH not negotiated).
    pub write_through: bool,
    /// Stopped until the driver resets it.
    pub broken: bool,
    /// Guest-caused warnings left.
    pub warnings_left: u32,
}

/// A virtio-blk device backed by a [`Disk`].
pub struct VirtioBlock {
    disk: Disk,
    mem: GuestMemoryMmap,
    features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    broken: bool,
    descs: Vec<Descriptor>,
    segs: Vec<Segment>,
    iovecs: Vec<libc::iovec>,
    warnings_left: u32,
}

// SAFETY: the raw pointers in `iovecs` are scratch values rebuilt for every request and
// never dereferenced outside `execute`, which runs while the device lock is held.
unsafe impl Send for VirtioBlock {}

impl VirtioBlock {
    /// A device serving `disk` to a guest with memory `mem`.
    pub fn new(disk: Disk, mem: GuestMemoryMmap) -> Self {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC);
        if disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors.to_le_bytes());
        // size_max (unused: no VIRTIO_BLK_F_SIZE_MAX), seg_max: a chain holds at most a
        // queue's worth of descriptors, two of them header and status.
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        Self {
            disk,
            mem,
            features,
            config,
            active: None,
            broken: false,
            descs: Vec::with_capacity(MAX_DESCRIPTORS + 1),
            segs: Vec::with_capacity(MAX_DESCRIPTORS),
            iovecs: Vec::with_capacity(MAX_DESCRIPTORS),
            warnings_left: 8,
        }
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Stops serving until the driver resets the device (a queue the guest broke): the
    /// transport then shows DEVICE_NEEDS_RESET and the driver gets a configuration interrupt
    /// (virtio 1.2 §2.1.2).
    fn enter_needs_reset(&mut self, why: &dyn std::fmt::Display) {
        if self.warnings_left > 0 {
            self.warnings_left -= 1;
            warn!("block: {why}; the device stops until the driver resets it");
        }
        if let Some(active) = self.active.take() {
            self.broken = true;
            if let Err(e) = active.interrupt.trigger(INT_CONFIG) {
                warn!("block: cannot interrupt the guest: {e}");
            }
        }
    }

    /// Serves the available requests, then interrupts the guest if it wants to know. Returns
    /// true when requests are left (served in bounded batches, by count and by bytes, so one
    /// busy queue cannot hold the event loop); the caller then comes back later.
    pub fn process_queue(&mut self) -> bool {
        let mut used_any = false;
        let result = self.serve(&mut used_any);
        if used_any {
            if let Some(active) = self.active.as_mut() {
                if active.queue.needs_notification(&self.mem).unwrap_or(true) {
                    if let Err(e) = active.interrupt.trigger(INT_VRING) {
                        warn!("block: cannot interrupt the guest: {e}");
                    }
                }
            }
        }
        match result {
            Ok(more) => more,
            Err(why) => {
                // Completions before the breakage are announced first.
                if used_any {
                    if let Some(active) = self.active.as_ref() {
                        let _ = active.interrupt.trigger(INT_VRING);
                    }
                }
                self.enter_needs_reset(&why);
                false
            }
        }
    }

    /// [`Self::process_queue`] without interrupts and error handling: `Err` means the queue is
    /// broken; `used_any` tells whether requests were completed.
    fn serve(&mut self, used_any: &mut bool) -> Result<bool, String> {
        const MAX_ROUNDS: usize = 16;
        let Self {
            active,
            mem,
            disk,
            descs,
            segs,
            iovecs,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return Ok(false);
        };
        let mut bytes = 0u64;
        for _ in 0..MAX_ROUNDS {
            active
                .queue
                .disable_notification(mem)
                .map_err(|e| e.to_string())?;
            // An available index more than a queue ahead is a broken ring (virtio 1.2
            // 2.7.13.3): refuse it rather than chase it.
            let idx = active
                .queue
                .avail_idx(mem, Ordering::Acquire)
                .map_err(|e| e.to_string())?;
            let pending = (idx - std::num::Wrapping(active.queue.next_avail())).0;
            if pending > active.queue.size() {
                return Err(format!(
                    "avail index {pending} entries ahead of a queue of {}",
                    active.queue.size()
                ));
            }
            for _ in 0..pending {
                let Some(chain) = active.queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                let head = chain.head_index();
                descs.clear();
                descs.extend(chain.take(MAX_DESCRIPTORS + 1));
                // virtio-queue ends a chain silently at a bad `next`, a bad indirect table or
                // its length limit: a last descriptor still pointing on is a broken ring.
                if descs.len() <= MAX_DESCRIPTORS && descs.last().is_some_and(|d| d.has_next()) {
                    return Err(format!("descriptor chain {head} is cut short"));
                }
                let (status_addr, status, len) = match parse(mem, descs, segs) {
                    Parsed::Request(req, status_addr) => {
                        bytes = bytes.saturating_add(req.data_len);
                        let (status, len) = execute(mem, disk, &req, iovecs, active.write_through);
                        (Some(status_addr), status, len)
                    }
                    Parsed::Fail(status, status_addr) => (Some(status_addr), status, 0),
                    Parsed::Unusable => (None, 0, 0),
                };
                let used_len = match status_addr {
                    Some(addr) if mem.write_obj(status, GuestAddress(addr)).is_ok() => len + 1,
                    _ => {
                        debug!("block: request {head} has no usable status byte");
                        0
                    }
                };
                active
                    .queue
                    .add_used(mem, head, used_len)
                    .map_err(|e| e.to_string())?;
                *used_any = true;
                if bytes >= BATCH_BYTES {
                    return Ok(true);
                }
            }
            if !active
                .queue
                .enable_notification(mem)
                .map_err(|e| e.to_string())?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        debug!("block: ignored configuration write at {offset:#x}");
    }

    fn activate(
        &mut self,
        features: u64,
        mut queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let mut queue = queues.pop().ok_or(ActivateError::BadQueue(0))?;
        queue.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        self.active = Some(Active {
            queue,
            interrupt,
            write_through: features & (1 << VIRTIO_BLK_F_FLUSH) == 0,
        });
        self.broken = false;
        Ok(())
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
        // The warning budget is the device's whole life's: a guest that breaks and resets the
        // device in a loop must not flood the host log.
    }

    fn state(&self) -> crate::virtio::VirtioDeviceState {
        crate::virtio::VirtioDeviceState::Block(BlockState {
            path: self.disk.path.clone(),
            sectors: self.disk.sectors,
            read_only: self.disk.read_only,
            serial: self.disk.serial.clone(),
            queue: self
                .active
                .as_ref()
                .map(|a| crate::virtio::QueueSnapshot(a.queue.state())),
            write_through: self.active.as_ref().is_some_and(|a| a.write_through),
            broken: self.broken,
            warnings_left: self.warnings_left,
        })
    }

    fn restore(
        &mut self,
        state: &crate::virtio::VirtioDeviceState,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let crate::virtio::VirtioDeviceState::Block(s) = state else {
            return Err(ActivateError::BadState("not a disk's state"));
        };
        if s.sectors != self.disk.sectors || s.read_only != self.disk.read_only {
            return Err(ActivateError::BadState("the disk's size or mode changed"));
        }
        self.broken = s.broken;
        self.warnings_left = s.warnings_left;
        self.active = match &s.queue {
            None => None,
            Some(q) => {
                let queue = Queue::try_from(q.0).map_err(|_| ActivateError::BadQueue(0))?;
                // Its rings must lie in guest RAM, as activation requires of a driver.
                if !queue.is_valid(&self.mem) {
                    return Err(ActivateError::BadQueue(0));
                }
                Some(Active {
                    queue,
                    interrupt,
                    write_through: s.write_through,
                })
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use virtio_bindings::virtio_blk::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Rig {
        mem: GuestMemoryMmap,
        dev: VirtioBlock,
        irq: EventFd,
        path: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(read_only: bool, name: &str) -> Rig {
        let path = std::env::temp_dir().join(format!("ember-blk-{}-{name}", std::process::id()));
        let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("image");
        let disk = Disk::open(&path, read_only, "serial-1234").expect("open");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("memory");
        let dev = VirtioBlock::new(disk, mem.clone());
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        Rig {
            mem,
            dev,
            irq,
            path,
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Runs `descs` as the available chains; returns the used ring entries `(id, len)`.
    fn run(r: &mut Rig, descs: &[RawDescriptor]) -> Vec<(u32, u32)> {
        let mock = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
        let q: Queue = mock.create_queue().expect("queue");
        r.dev
            .activate(
                (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX),
                vec![q],
                VirtioInterrupt::new(r.irq.try_clone().expect("clone")),
            )
            .expect("activate");
        mock.add_desc_chains(descs, 0).expect("chains");
        r.dev.process_queue();
        let n = mock.used().idx().load();
        (0..n)
            .map(|i| {
                let e = mock.used().ring().ref_at(i as usize).expect("used").load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn header(r: &Rig, t: u32, sector: u64) {
        r.mem
            .write_obj(
                super::super::request::RequestHeader {
                    request_type: t,
                    reserved: 0,
                    sector,
                },
                GuestAddress(HDR),
            )
            .expect("header");
    }

    fn status(r: &Rig) -> u8 {
        r.mem.read_obj(GuestAddress(STATUS)).expect("status")
    }

    fn rw_chain(data_flags: u16, len: u32) -> [RawDescriptor; 3] {
        [
            d(HDR, 16, NEXT, 1),
            d(DATA, len, data_flags | NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ]
    }

    #[test]
    fn write_flush_read_round_trip() {
        let mut r = rig(false, "rw");
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        r.mem.write_slice(&data, GuestAddress(DATA)).expect("data");
        header(&r, VIRTIO_BLK_T_OUT, 2);
        assert_eq!(run(&mut r, &rw_chain(0, 4096)), vec![(0, 1)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_OK as u8);
        assert!(r.irq.read().is_ok(), "guest interrupted");
        let file = std::fs::read(&r.path).expect("image");
        assert_eq!(&file[1024..1024 + 4096], &data[..]);

        header(&r, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            run(&mut r, &[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)]),
            vec![(0, 1)]
        );
        assert_eq!(status(&r), VIRTIO_BLK_S_OK as u8);

        r.mem
            .write_slice(&[0u8; 4096], GuestAddress(DATA))
            .expect("clear");
        header(&r, VIRTIO_BLK_T_IN, 2);
        assert_eq!(run(&mut r, &rw_chain(WRITE, 4096)), vec![(0, 4097)]);
        let mut back = vec![0u8; 4096];
        r.mem
            .read_slice(&mut back, GuestAddress(DATA))
            .expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut r = rig(true, "ro");
        let before = std::fs::read(&r.path).expect("image");
        header(&r, VIRTIO_BLK_T_OUT, 0);
        r.mem
            .write_slice(&[0xaa; 512], GuestAddress(DATA))
            .expect("data");
        run(&mut r, &rw_chain(0, 512));
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(std::fs::read(&r.path).expect("image"), before);
        assert_ne!(r.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn addresses_outside_guest_memory_fail_the_request() {
        let mut r = rig(false, "oob");
        header(&r, VIRTIO_BLK_T_IN, 0);
        let descs = [
            d(HDR, 16, NEXT, 1),
            d(0x7fff_0000_0000, 512, WRITE | NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run(&mut r, &descs), vec![(0, 1)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8);
        // Data straddling the end of RAM.
        let descs = [
            d(HDR, 16, NEXT, 1),
            d((4 << 20) - 512, 1024, WRITE | NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        run(&mut r, &descs);
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8);
        // A header outside RAM.
        let descs = [d(0x7fff_0000_0000, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
        run(&mut r, &descs);
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8);
        // A status byte outside RAM: returned with nothing written.
        let descs = [d(HDR, 16, NEXT, 1), d(0x7fff_0000_0000, 1, WRITE, 0)];
        assert_eq!(run(&mut r, &descs), vec![(0, 0)]);
    }

    #[test]
    fn oversized_zero_length_and_short_descriptors() {
        let mut r = rig(false, "sizes");
        header(&r, VIRTIO_BLK_T_IN, 0);
        // A descriptor reaching past guest RAM cuts the chain short: a broken ring, so the
        // device stops until reset and tells the driver; nothing is written or used.
        r.mem
            .write_obj(0xeeu8, GuestAddress(STATUS))
            .expect("status");
        assert_eq!(run(&mut r, &rw_chain(WRITE, u32::MAX)), vec![]);
        assert_eq!(status(&r), 0xee, "oversized");
        assert!(r.dev.needs_reset() && !r.dev.is_active());
        assert!(r.irq.read().is_ok(), "configuration interrupt");
        run(&mut r, &rw_chain(WRITE, 1 << 20));
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "larger than the disk");
        run(&mut r, &rw_chain(WRITE, 100));
        assert_eq!(
            status(&r),
            VIRTIO_BLK_S_IOERR as u8,
            "not a sector multiple"
        );
        header(&r, VIRTIO_BLK_T_IN, 127);
        run(&mut r, &rw_chain(WRITE, 1024));
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "past capacity");
        header(&r, VIRTIO_BLK_T_IN, u64::MAX);
        run(&mut r, &rw_chain(WRITE, 512));
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "sector overflow");
        header(&r, VIRTIO_BLK_T_IN, 0);
        run(&mut r, &rw_chain(WRITE, 0));
        assert_eq!(
            status(&r),
            VIRTIO_BLK_S_OK as u8,
            "zero-length read is empty"
        );
        let short = [
            d(HDR, 8, NEXT, 1),
            d(DATA, 512, WRITE | NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        run(&mut r, &short);
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "8-byte header");
        header(&r, VIRTIO_BLK_T_OUT, 0);
        run(&mut r, &rw_chain(WRITE, 512));
        assert_eq!(
            status(&r),
            VIRTIO_BLK_S_IOERR as u8,
            "write from a device-writable buffer"
        );
        // Status descriptor not writable: nothing to report into.
        let descs = [d(HDR, 16, NEXT, 1), d(STATUS, 1, 0, 0)];
        assert_eq!(run(&mut r, &descs), vec![(0, 0)]);
    }

    #[test]
    fn descriptor_cycle_breaks_the_ring_until_reset() {
        let mut r = rig(false, "cycle");
        header(&r, VIRTIO_BLK_T_IN, 0);
        r.mem
            .write_obj(0xeeu8, GuestAddress(STATUS))
            .expect("status");
        let descs = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE | NEXT, 0)];
        assert_eq!(
            run(&mut r, &descs),
            vec![],
            "a cyclic chain is never completed"
        );
        assert_eq!(status(&r), 0xee);
        assert!(r.dev.needs_reset());
        r.dev.reset();
        assert!(!r.dev.needs_reset());
        // Reset and activated again, the device serves.
        header(&r, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut r, &rw_chain(WRITE, 512)), vec![(0, 513)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_OK as u8);
        // Breaking and resetting it again and again spends one warning budget, not one per
        // reset.
        for _ in 0..20 {
            header(&r, VIRTIO_BLK_T_IN, 0);
            run(&mut r, &descs);
            assert!(r.dev.needs_reset());
            r.dev.reset();
        }
        assert_eq!(
            r.dev.warnings_left, 0,
            "a reset restored the warning budget"
        );
    }

    #[test]
    fn any_descriptor_layout_is_served() {
        let mut r = rig(false, "layout");
        // A write whose header and data share one descriptor, status alone.
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
        header(&r, VIRTIO_BLK_T_OUT, 3);
        r.mem
            .write_slice(&data, GuestAddress(HDR + 16))
            .expect("data");
        let descs = [d(HDR, 16 + 1024, NEXT, 1), d(STATUS, 1, WRITE, 0)];
        assert_eq!(run(&mut r, &descs), vec![(0, 1)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_OK as u8);
        let file = std::fs::read(&r.path).expect("image");
        assert_eq!(&file[3 * 512..3 * 512 + 1024], &data[..]);

        // A read whose header is split over two descriptors and whose data shares the last
        // descriptor with the status byte.
        header(&r, VIRTIO_BLK_T_IN, 3);
        let descs = [
            d(HDR, 5, NEXT, 1),
            d(HDR + 5, 11, NEXT, 2),
            d(DATA, 1024 + 1, WRITE, 0),
        ];
        assert_eq!(run(&mut r, &descs), vec![(0, 1025)]);
        let mut back = vec![0u8; 1025];
        r.mem
            .read_slice(&mut back, GuestAddress(DATA))
            .expect("back");
        assert_eq!(&back[..1024], &data[..]);
        assert_eq!(back[1024], VIRTIO_BLK_S_OK as u8, "status after the data");
    }

    #[test]
    fn a_failed_sync_fails_every_later_write_and_flush() {
        let mut r = rig(false, "syncfail");
        r.dev.disk.sync_failed = true;
        header(&r, VIRTIO_BLK_T_OUT, 0);
        run(&mut r, &rw_chain(0, 512));
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "write");
        header(&r, VIRTIO_BLK_T_FLUSH, 0);
        run(&mut r, &[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_IOERR as u8, "flush");
        header(&r, VIRTIO_BLK_T_IN, 0);
        run(&mut r, &rw_chain(WRITE, 512));
        assert_eq!(status(&r), VIRTIO_BLK_S_OK as u8, "reads still work");
    }

    #[test]
    fn flush_decides_write_through() {
        let mut r = rig(false, "wt");
        let mock = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
        let irq = || VirtioInterrupt::new(r.irq.try_clone().expect("clone"));
        let base = 1 << VIRTIO_F_VERSION_1;
        r.dev
            .activate(base, vec![mock.create_queue().expect("q")], irq())
            .expect("activate");
        assert!(r.dev.active.as_ref().is_some_and(|a| a.write_through));
        r.dev
            .activate(
                base | (1 << VIRTIO_BLK_F_FLUSH),
                vec![mock.create_queue().expect("q")],
                irq(),
            )
            .expect("activate");
        assert!(r.dev.active.as_ref().is_some_and(|a| !a.write_through));
    }

    #[test]
    fn unknown_type_is_unsupported_and_get_id_answers() {
        let mut r = rig(false, "types");
        header(&r, 0x77, 0);
        run(&mut r, &[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)]);
        assert_eq!(status(&r), VIRTIO_BLK_S_UNSUPP as u8);
        header(&r, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(run(&mut r, &rw_chain(WRITE, 20)), vec![(0, 21)]);
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
        assert_eq!(&id[..11], b"serial-1234");
        assert_eq!(&id[11..], &[0u8; 9]);
    }

    #[test]
    fn config_space() {
        let r = rig(false, "config");
        let mut cap = [0u8; 8];
        r.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 128);
        let mut seg = [0u8; 4];
        r.dev.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), u32::from(QUEUE_SIZE) - 2);
        let mut past = [0xffu8; 8];
        r.dev.read_config(14, &mut past);
        assert_eq!(&past[2..], &[0; 6]);
        r.dev.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn a_reset_device_ignores_notifications() {
        let mut r = rig(false, "inactive");
        header(&r, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mut r, &rw_chain(WRITE, 512)), vec![(0, 513)]);
        assert!(r.irq.read().is_ok());
        r.dev.reset();
        assert!(!r.dev.is_active());
        assert!(!r.dev.process_queue());
        assert!(r.irq.read().is_err(), "no interrupt after reset");
    }
}
