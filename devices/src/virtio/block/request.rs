//! One virtio-blk request (virtio 1.2 §5.2.6): parsing a descriptor chain into a request and
//! executing it against a [`Disk`]. Everything here treats the chain as hostile: every
//! address is checked against guest memory, every length against the disk, and any request
//! that does not follow the layout (a readable 16-byte header, data, a writable status byte
//! last) ends in IOERR, or with nothing written when even the status byte is unusable.

use std::os::fd::AsRawFd;

use log::debug;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::Disk;
use super::{ID_BYTES, SECTOR_SIZE};
use crate::virtio::GuestMemoryMmap;

/// The request header (`struct virtio_blk_req` without data and status).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    /// Request type.
    pub request_type: u32,
    /// Reserved.
    pub reserved: u32,
    /// First sector.
    pub sector: u64,
}

// SAFETY: `RequestHeader` is `repr(C)`, 16 bytes without padding, with only integer fields,
// so any byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Longest chain Ember accepts (descriptor chains are at most a queue long anyway).
pub const MAX_DESCRIPTORS: usize = 1026;

/// A piece of guest memory holding request data: all or part of one descriptor (the header
/// and the status byte may share descriptors with data: virtio 1.2 §2.7.4 lets the driver
/// lay a request out across descriptors as it likes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write_only: bool,
}

/// A parsed request, borrowing its data segments.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request type.
    pub request_type: u32,
    /// First sector.
    pub sector: u64,
    /// Data segments in order.
    pub data: &'a [Segment],
    /// Total data length.
    pub data_len: u64,
}

/// The outcome of parsing: a request, a request to fail with a status, or a chain with no
/// usable status byte.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A well-formed request; its status byte is at the address given.
    Request(Request<'a>, u64),
    /// A malformed request whose status byte is at the address given.
    Fail(u8, u64),
    /// Not even a status byte: the chain is returned unused.
    Unusable,
}

const HEADER_LEN: usize = std::mem::size_of::<RequestHeader>();

/// Parses one chain's descriptors (collected by the caller, at most [`MAX_DESCRIPTORS`]):
/// the first 16 bytes of the chain are the header (device-readable), its last byte the status
/// (device-writable), everything in between data. `segs` is scratch space reused across
/// requests; the request's data segments are left in it.
pub fn parse<'a>(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    segs: &'a mut Vec<Segment>,
) -> Parsed<'a> {
    let Some(status) = descs.last() else {
        return Parsed::Unusable;
    };
    if descs.len() > MAX_DESCRIPTORS || !status.is_write_only() || status.len() == 0 {
        return Parsed::Unusable;
    }
    // The status byte is the last byte of the last descriptor.
    let Some(status_addr) = status.addr().0.checked_add(u64::from(status.len()) - 1) else {
        return Parsed::Unusable;
    };
    if !mem.address_in_range(GuestAddress(status_addr)) {
        return Parsed::Unusable;
    }
    let ioerr = Parsed::Fail(VIRTIO_BLK_S_IOERR as u8, status_addr);

    segs.clear();
    let last = descs.len() - 1;
    for (i, d) in descs.iter().enumerate() {
        let len = if i == last { d.len() - 1 } else { d.len() };
        segs.push(Segment {
            addr: d.addr(),
            len,
            write_only: d.is_write_only(),
        });
    }
    // The header: the first 16 bytes, from device-readable segments.
    let mut h = RequestHeader::default();
    let header = h.as_mut_slice();
    let mut got = 0usize;
    let mut consumed = 0usize;
    for seg in segs.iter_mut() {
        if got == HEADER_LEN {
            break;
        }
        if seg.write_only {
            return ioerr;
        }
        let take = (seg.len as usize).min(HEADER_LEN - got);
        if mem
            .read_slice(&mut header[got..got + take], seg.addr)
            .is_err()
        {
            return ioerr;
        }
        got += take;
        // `take` fits the segment: the address stays inside the checked range.
        seg.addr = GuestAddress(seg.addr.0.wrapping_add(take as u64));
        seg.len -= take as u32;
        if seg.len == 0 {
            consumed += 1;
        }
    }
    if got < HEADER_LEN {
        return ioerr;
    }
    segs.drain(..consumed);
    segs.retain(|s| s.len > 0);
    let data_len: u64 = segs.iter().map(|d| u64::from(d.len)).sum();
    Parsed::Request(
        Request {
            request_type: h.request_type,
            sector: h.sector,
            data: segs,
            data_len,
        },
        status_addr,
    )
}

/// Executes a parsed request; returns the status and the number of bytes written to guest
/// memory before the status byte. `iovecs` is scratch space reused across requests.
/// `write_through`: the driver did not negotiate FLUSH, so it treats the disk as having no
/// volatile cache (virtio 1.2 §5.2.5) and every write is made durable before it completes.
pub fn execute(
    mem: &GuestMemoryMmap,
    disk: &mut Disk,
    req: &Request<'_>,
    iovecs: &mut Vec<libc::iovec>,
    write_through: bool,
) -> (u8, u32) {
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    match req.request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let is_read = req.request_type == VIRTIO_BLK_T_IN;
            if !is_read && disk.read_only {
                return (IOERR, 0);
            }
            if !is_read && disk.sync_failed {
                return (IOERR, 0);
            }
            if req.data.iter().any(|d| d.write_only != is_read) {
                return (IOERR, 0);
            }
            if !req.data_len.is_multiple_of(SECTOR_SIZE) || req.data_len > u64::from(u32::MAX) {
                return (IOERR, 0);
            }
            let end = req.sector.checked_add(req.data_len / SECTOR_SIZE);
            if end.is_none_or(|e| e > disk.sectors) {
                return (IOERR, 0);
            }
            if build_iovecs(mem, req.data, iovecs).is_err() {
                return (IOERR, 0);
            }
            let offset = req.sector * SECTOR_SIZE;
            match transfer(disk, iovecs, offset, is_read) {
                Ok(()) if is_read => (OK, req.data_len as u32),
                Ok(()) if write_through => sync(disk),
                Ok(()) => (OK, 0),
                Err(e) => {
                    debug!("block: transfer at sector {} failed: {e}", req.sector);
                    (IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.read_only {
                return (OK, 0);
            }
            sync(disk)
        }
        VIRTIO_BLK_T_GET_ID => {
            if req.data.iter().any(|d| !d.write_only) || req.data.is_empty() {
                return (IOERR, 0);
            }
            let mut id = [0u8; ID_BYTES];
            let n = disk.serial.len().min(ID_BYTES);
            id[..n].copy_from_slice(&disk.serial.as_bytes()[..n]);
            let mut written = 0usize;
            for d in req.data {
                if written == ID_BYTES {
                    break;
                }
                let take = (d.len as usize).min(ID_BYTES - written);
                if mem
                    .write_slice(&id[written..written + take], d.addr)
                    .is_err()
                {
                    return (IOERR, 0);
                }
                written += take;
            }
            (OK, written as u32)
        }
        _ => (VIRTIO_BLK_S_UNSUPP as u8, 0),
    }
}

/// Makes the disk's written data durable. A failure is remembered: the kernel reports a
/// writeback error once, so a later successful sync would not mean the data is there; every
/// later write and flush fails instead.
fn sync(disk: &mut Disk) -> (u8, u32) {
    if !disk.sync_failed && disk.file.sync_data().is_ok() {
        return (VIRTIO_BLK_S_OK as u8, 0);
    }
    if !disk.sync_failed {
        log::error!("block: cannot sync the disk image: writes fail from now on");
    }
    disk.sync_failed = true;
    (VIRTIO_BLK_S_IOERR as u8, 0)
}

/// Turns data segments into host iovecs, each checked to lie inside one guest RAM region.
fn build_iovecs(
    mem: &GuestMemoryMmap,
    data: &[Segment],
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(), ()> {
    iovecs.clear();
    for d in data {
        let len = d.len;
        if len == 0 {
            continue;
        }
        let slice = mem.get_slice(d.addr, len as usize).map_err(|_| ())?;
        iovecs.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: len as usize,
        });
    }
    Ok(())
}

/// Moves all bytes described by `iovecs` between guest memory and the disk at `offset`,
/// retrying short transfers. A read past the end of a shrunken image is an error.
fn transfer(
    disk: &Disk,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    is_read: bool,
) -> std::io::Result<()> {
    let fd = disk.file.as_raw_fd();
    let mut first = 0usize;
    while first < iovecs.len() {
        let iov = &iovecs[first..];
        let count = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: every iovec points into guest memory checked by `build_iovecs` to hold
        // `iov_len` bytes; guest memory outlives this call.
        let n = unsafe {
            if is_read {
                libc::preadv(fd, iov.as_ptr(), count, offset as libc::off_t)
            } else {
                libc::pwritev(fd, iov.as_ptr(), count, offset as libc::off_t)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "image ended",
            ));
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 && first < iovecs.len() {
            let v = &mut iovecs[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same iovec's buffer, `n < iov_len`.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}
