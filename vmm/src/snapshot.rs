//! Snapshots: a paused VM's whole state in a directory, and the checks a restore makes before
//! anything runs.
//!
//! A snapshot directory holds:
//! - `state`: `EMBERSNP` (8 bytes), the format version (u32 LE), the payload's length (u64 LE)
//!   and CRC-32 (u32 LE), then the payload: [`Snapshot`] in postcard, a compact serde format.
//!   The configuration inside is JSON (it accepts sizes as numbers or strings, which a format
//!   without field types cannot carry).
//! - `memory`: guest RAM, region after region, as a sparse file: only pages that are not all
//!   zeros are written, the rest are holes. For a booted VM (anonymous memory) only the pages
//!   the guest touched are read at all (present or swapped in `/proc/self/pagemap`); a
//!   restored VM's memory is a private file mapping whose untouched pages hold the older
//!   snapshot's data, so every page is read. A restore maps the file copy-on-write
//!   (`MAP_PRIVATE`), read lazily.
//! - `description.json`: what is in it, for people (not read back).
//!
//! The order of saving follows the KVM API: the VM is paused (every vCPU out of `KVM_RUN`
//! with its last exit completed), each vCPU reads its own state on its thread, then the VM's
//! clock and the devices are read, and the memory written last.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use crate::vcpu::VcpuState;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: [u8; 8] = *b"EMBERSNP";
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name.
pub const MEMORY_FILE: &str = "memory";
/// The description's name.
pub const DESCRIPTION_FILE: &str = "description.json";
const PAGE: usize = 4096;

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("Snapshot file {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The state file is shorter than its header says.
    #[error("Snapshot state {0} is truncated")]
    Truncated(PathBuf),
    /// Not a snapshot.
    #[error("{0} is not an Ember snapshot state file")]
    BadMagic(PathBuf),
    /// Written by a newer Ember.
    #[error(
        "Snapshot format version {0} is not supported (this Ember reads version {FORMAT_VERSION})"
    )]
    Version(u32),
    /// The payload does not match its checksum.
    #[error("Snapshot state {0} is corrupt (checksum mismatch)")]
    Checksum(PathBuf),
    /// The payload does not decode.
    #[error("Snapshot state cannot be decoded: {0}")]
    Decode(String),
    /// The state cannot be encoded.
    #[error("Snapshot state cannot be encoded: {0}")]
    Encode(String),
    /// The snapshot was taken on another CPU vendor.
    #[error("Snapshot was taken on a {snapshot} CPU; this host is {host}")]
    Vendor {
        /// The snapshot's vendor.
        snapshot: String,
        /// This host's.
        host: String,
    },
    /// The guest was given CPU features this host lacks.
    #[error("Snapshot's vCPUs use CPU features this host lacks: {0}")]
    CpuFeatures(String),
    /// The memory file does not hold the guest's RAM.
    #[error("Snapshot memory file {path} is {found} bytes; the snapshot needs {needed}")]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// What the regions need.
        needed: u64,
    },
    /// Mapping the memory file failed.
    #[error("Cannot map the snapshot's memory")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The saved memory layout is not one a VM can have.
    #[error("Snapshot memory layout is invalid")]
    Layout,
}

/// Where a region of guest RAM is in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionRecord {
    /// Guest-physical address.
    pub guest_address: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// Everything a restore needs but the memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The VM's configuration (JSON of [`crate::VmConfig`]).
    pub config_json: String,
    /// CPU vendor string of the host the snapshot was taken on.
    pub cpu_vendor: String,
    /// The VM's kvmclock.
    pub clock: kvm_bindings::kvm_clock_data,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The I/O APIC.
    pub ioapic: devices::legacy::IoapicState,
    /// The UART.
    pub serial: devices::legacy::serial::SerialDeviceState,
    /// The i8042.
    pub i8042: devices::legacy::I8042State,
    /// The virtio-mmio transports with their devices, in attachment order.
    pub transports: Vec<devices::virtio::mmio::MmioTransportState>,
    /// Guest RAM in the memory file.
    pub memory: Vec<MemoryRegionRecord>,
}

/// What writing a snapshot produced.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotInfo {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Bytes of memory written (the rest are holes).
    pub memory_bytes_written: u64,
    /// Size of the state file.
    pub state_bytes: u64,
}

/// This host's CPU vendor string (CPUID leaf 0).
pub fn host_cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::with_capacity(12);
    for w in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |e| SnapshotError::Io(path.to_path_buf(), e)
}

/// Writes `snapshot` and guest memory `mem` into `dir` (created if missing). Files are
/// written under temporary names and renamed when complete, so a failed write leaves no
/// half snapshot under the real names.
/// `file_backed`: the VM's memory maps an earlier snapshot (a restored VM).
pub fn write(
    dir: &Path,
    snapshot: &mut Snapshot,
    mem: &GuestMemoryMmap,
    file_backed: bool,
) -> Result<SnapshotInfo, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mem_path = dir.join(MEMORY_FILE);
    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let (records, written) = write_memory(&mem_tmp, mem, file_backed)?;
    snapshot.memory = records;
    let payload =
        postcard::to_stdvec(&*snapshot).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    let state_path = dir.join(STATE_FILE);
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    write_synced(&state_tmp, &out)?;
    let ram: u64 = snapshot.memory.iter().map(|r| r.size).sum();
    let description = serde_json::json!({
        "format_version": FORMAT_VERSION,
        "cpu_vendor": snapshot.cpu_vendor,
        "vcpus": snapshot.vcpus.len(),
        "ram_bytes": ram,
        "memory_bytes_written": written,
        "memory_regions": snapshot.memory,
        "disks": snapshot.transports.len(),
        "config": serde_json::from_str::<serde_json::Value>(&snapshot.config_json).ok(),
    });
    let desc_tmp = dir.join(format!(".{DESCRIPTION_FILE}.tmp"));
    write_synced(&desc_tmp, format!("{description:#}\n").as_bytes())?;
    std::fs::rename(&mem_tmp, &mem_path).map_err(io(&mem_path))?;
    std::fs::rename(&desc_tmp, dir.join(DESCRIPTION_FILE)).map_err(io(dir))?;
    // The state last: a directory with a state file is a complete snapshot.
    std::fs::rename(&state_tmp, &state_path).map_err(io(&state_path))?;
    Ok(SnapshotInfo {
        ram_bytes: ram,
        memory_bytes_written: written,
        state_bytes: out.len() as u64,
    })
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Which pages of `[host, host + size)` an anonymous mapping has ever had (present or swapped
/// out, from `/proc/self/pagemap`); `None` if it cannot be read (every page is then read).
fn touched_pages(host: *const u8, size: usize) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = size.div_ceil(PAGE);
    let first = (host as usize / PAGE) as u64;
    let mut touched = Vec::with_capacity(pages);
    let mut buf = vec![0u8; 8 * 4096];
    let mut done = 0usize;
    while done < pages {
        let n = (pages - done).min(4096);
        let chunk = &mut buf[..8 * n];
        pagemap
            .read_exact_at(chunk, (first + done as u64) * 8)
            .ok()?;
        for e in chunk.chunks_exact(8) {
            let v = u64::from_le_bytes(e.try_into().ok()?);
            touched.push(v & (PRESENT | SWAPPED) != 0);
        }
        done += n;
    }
    Some(touched)
}

/// Writes guest RAM sparsely: per region, the pages that are not all zeros, of those the
/// guest touched (every page when `file_backed`).
fn write_memory(
    path: &Path,
    mem: &GuestMemoryMmap,
    file_backed: bool,
) -> Result<(Vec<MemoryRegionRecord>, u64), SnapshotError> {
    let f = File::create(path).map_err(io(path))?;
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let size = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| SnapshotError::Layout)?;
        let pages = (size as usize).div_ceil(PAGE);
        let touched = if file_backed {
            None
        } else {
            touched_pages(host, size as usize)
        };
        for p in 0..pages {
            if touched.as_ref().is_some_and(|t| !t[p]) {
                continue; // never touched: a hole, which reads back as zeros
            }
            let len = PAGE.min(size as usize - p * PAGE);
            // SAFETY: the page lies inside the region's mapping; the VM is paused, so no vCPU
            // writes it while it is read.
            let page = unsafe { std::slice::from_raw_parts(host.add(p * PAGE), len) };
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            f.write_all_at(page, offset + (p * PAGE) as u64)
                .map_err(io(path))?;
            written += len as u64;
        }
        records.push(MemoryRegionRecord {
            guest_address: region.start_addr().0,
            size,
            file_offset: offset,
        });
        offset += size;
    }
    f.set_len(offset).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok((records, written))
}

/// Reads and checks `dir`'s state file (magic, version, length, checksum) and decodes it.
pub fn read(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(&path))?;
    if data.len() < HEADER_LEN {
        return Err(if data.len() >= 8 && data[..8] != MAGIC {
            SnapshotError::BadMagic(path)
        } else {
            SnapshotError::Truncated(path)
        });
    }
    if data[..8] != MAGIC {
        return Err(SnapshotError::BadMagic(path));
    }
    let word = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&data[at..at + n]);
        u64::from_le_bytes(b)
    };
    let version = word(8, 4) as u32;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version(version));
    }
    let len = word(12, 8);
    let crc = word(20, 4) as u32;
    let payload = &data[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(SnapshotError::Truncated(path));
    }
    let payload = &payload[..len as usize];
    if crc32fast::hash(payload) != crc {
        return Err(SnapshotError::Checksum(path));
    }
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Decode(e.to_string()))
}

/// Checks that this host can run the snapshot's vCPUs: the same CPU vendor, and every
/// feature bit of the saved CPUID among those Ember gives a vCPU on this host (`supported`:
/// KVM's supported CPUID passed through Ember's CPU model, as for a boot).
pub fn check_host(
    snapshot: &Snapshot,
    supported: &[kvm_bindings::kvm_cpuid_entry2],
) -> Result<(), SnapshotError> {
    let host = host_cpu_vendor();
    if snapshot.cpu_vendor != host {
        return Err(SnapshotError::Vendor {
            snapshot: snapshot.cpu_vendor.clone(),
            host,
        });
    }
    // Feature leaves: 1 (ECX, EDX), 7.0 (EBX, ECX, EDX), 0x8000_0001 (ECX, EDX). Ember sets
    // two bits of leaf 1 ECX itself (TSC deadline 24, hypervisor 31).
    let own = |leaf: u32, reg: usize| -> u32 {
        if leaf == 1 && reg == 2 {
            (1 << 24) | (1 << 31)
        } else {
            0
        }
    };
    for v in &snapshot.vcpus {
        for e in &v.cpuid {
            let regs = match (e.function, e.index) {
                (1, _) => &[2usize, 3][..],
                (7, 0) => &[1, 2, 3][..],
                (0x8000_0001, _) => &[2, 3][..],
                _ => continue,
            };
            let Some(s) = supported
                .iter()
                .find(|h| h.function == e.function && (e.function != 7 || h.index == e.index))
            else {
                return Err(SnapshotError::CpuFeatures(format!(
                    "leaf {:#x}",
                    e.function
                )));
            };
            for &r in regs {
                let get = |x: &kvm_bindings::kvm_cpuid_entry2| [x.eax, x.ebx, x.ecx, x.edx][r];
                let missing = get(e) & !get(s) & !own(e.function, r);
                if missing != 0 {
                    return Err(SnapshotError::CpuFeatures(format!(
                        "leaf {:#x} register {} bits {missing:#x}",
                        e.function,
                        ["eax", "ebx", "ecx", "edx"][r]
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Maps the snapshot's memory copy-on-write (`MAP_PRIVATE`, read lazily, shared between VMs
/// until written): the restored VM's RAM.
pub fn map_memory(dir: &Path, snapshot: &Snapshot) -> Result<GuestMemoryMmap, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(io(&path))?;
    let found = file.metadata().map_err(io(&path))?.len();
    let needed = snapshot
        .memory
        .iter()
        .map(|r| r.file_offset.saturating_add(r.size))
        .max()
        .unwrap_or(0);
    if found < needed {
        return Err(SnapshotError::MemorySize {
            path,
            found,
            needed,
        });
    }
    let mut regions = Vec::with_capacity(snapshot.memory.len());
    for r in &snapshot.memory {
        let fo = vm_memory::FileOffset::new(file.try_clone().map_err(io(&path))?, r.file_offset);
        let size = usize::try_from(r.size).map_err(|_| SnapshotError::Layout)?;
        let mapping = vm_memory::MmapRegion::build(
            Some(fo),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(SnapshotError::Map)?;
        let region =
            vm_memory::GuestRegionMmap::new(mapping, vm_memory::GuestAddress(r.guest_address))
                .ok_or(SnapshotError::Layout)?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| SnapshotError::Layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_checked_before_it_is_decoded() {
        let dir = std::env::temp_dir().join(format!("ember-snap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, b"EMB").expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::Truncated(_))));
        std::fs::write(&path, b"NOTASNAPSHOT-NOTASNAPSHOT-NOTASNAPSHOT").expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::BadMagic(_))));
        let payload = b"some payload".to_vec();
        let file = |version: u32, len: u64, crc: u32, payload: &[u8]| {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&version.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(payload);
            v
        };
        let crc = crc32fast::hash(&payload);
        std::fs::write(&path, file(99, 12, crc, &payload)).expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::Version(99))));
        std::fs::write(&path, file(FORMAT_VERSION, 40, crc, &payload)).expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::Truncated(_))));
        std::fs::write(&path, file(FORMAT_VERSION, 12, crc ^ 1, &payload)).expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::Checksum(_))));
        std::fs::write(&path, file(FORMAT_VERSION, 12, crc, &payload)).expect("write");
        assert!(matches!(read(&dir), Err(SnapshotError::Decode(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn empty_snapshot(vendor: &str, cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>) -> Snapshot {
        Snapshot {
            config_json: String::new(),
            cpu_vendor: vendor.into(),
            clock: Default::default(),
            vcpus: vec![VcpuState {
                id: 0,
                cpuid,
                mp_state: Default::default(),
                regs: Default::default(),
                sregs: Default::default(),
                // SAFETY: plain C data for which all zeros is a valid value.
                xsave: unsafe { std::mem::zeroed() },
                xcrs: Default::default(),
                debugregs: Default::default(),
                // SAFETY: plain C data for which all zeros is a valid value.
                lapic: unsafe { std::mem::zeroed() },
                msrs: Vec::new(),
                events: Default::default(),
            }],
            ioapic: devices::legacy::IoapicState {
                id: 0,
                select: 0,
                entries: Vec::new(),
            },
            serial: devices::legacy::serial::SerialDeviceState {
                uart: Default::default(),
                held: Vec::new(),
                lcr: 0,
                mcr: 0,
            },
            i8042: Default::default(),
            transports: Vec::new(),
            memory: Vec::new(),
        }
    }

    #[test]
    fn another_cpu_vendor_or_missing_features_are_refused() {
        let leaf = |function, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            ecx,
            ..Default::default()
        };
        let host = vec![leaf(1, 0x0000_2001), leaf(7, 0)];
        let ok = empty_snapshot(&host_cpu_vendor(), vec![leaf(1, 0x0000_2001 | (1 << 31))]);
        assert!(
            check_host(&ok, &host).is_ok(),
            "Ember's own bits (hypervisor) are allowed"
        );
        let vendor = if host_cpu_vendor() == "GenuineIntel" {
            "AuthenticAMD"
        } else {
            "GenuineIntel"
        };
        let other = empty_snapshot(vendor, vec![leaf(1, 0x2001)]);
        assert!(matches!(
            check_host(&other, &host),
            Err(SnapshotError::Vendor { .. })
        ));
        let more = empty_snapshot(&host_cpu_vendor(), vec![leaf(1, 0x2001 | (1 << 28))]);
        let e = check_host(&more, &host).expect_err("AVX is not on this host");
        assert!(e.to_string().contains("0x10000000"), "{e}");
    }

    #[test]
    fn memory_is_written_sparsely_and_mapped_back_copy_on_write() {
        let dir = std::env::temp_dir().join(format!("ember-snap-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mem = crate::memory::create_guest_memory(8 << 20).expect("memory");
        use vm_memory::Bytes;
        mem.write_obj(0xdead_beef_u32, vm_memory::GuestAddress(0x1000))
            .expect("write");
        mem.write_obj(0u64, vm_memory::GuestAddress(0x5000))
            .expect("touch a zero page");
        let tmp = dir.join(MEMORY_FILE);
        let (records, written) = write_memory(&tmp, &mem, false).expect("write memory");
        let (_, all) = write_memory(&dir.join("all"), &mem, true).expect("write memory");
        assert_eq!(all, written, "reading every page finds the same data");
        assert_eq!(written, PAGE as u64, "one non-zero page");
        assert_eq!(records.iter().map(|r| r.size).sum::<u64>(), 8 << 20);
        let mut snap = empty_snapshot(&host_cpu_vendor(), Vec::new());
        snap.memory = records;
        let back = map_memory(&dir, &snap).expect("map");
        let v: u32 = back
            .read_obj(vm_memory::GuestAddress(0x1000))
            .expect("read");
        assert_eq!(v, 0xdead_beef);
        back.write_obj(7u32, vm_memory::GuestAddress(0x1000))
            .expect("write");
        let again = map_memory(&dir, &snap).expect("map");
        let v: u32 = again
            .read_obj(vm_memory::GuestAddress(0x1000))
            .expect("read");
        assert_eq!(v, 0xdead_beef, "a write to one mapping stays private");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_len(4096))
            .expect("truncate");
        assert!(matches!(
            map_memory(&dir, &snap),
            Err(SnapshotError::MemorySize { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
