//! Guest RAM: anonymous private mappings (vm-memory's `GuestMemoryMmap`), one per RAM region
//! of the x86_64 layout, populated lazily by the host kernel as the guest touches them, and
//! optionally backed by transparent huge pages (`madvise(MADV_HUGEPAGE)`).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory as Ember uses it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The mapping failed (usually: not enough address space or memory).
    #[error("Cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    /// A region does not fit the host's address space.
    #[error("Guest memory region of {0} bytes is too large for this host")]
    TooLarge(u64),
    /// `madvise(MADV_HUGEPAGE)` was refused (a host kernel without transparent huge pages).
    #[error("Cannot back guest memory with transparent huge pages (--thp off avoids this)")]
    HugePages(#[source] std::io::Error),
}

/// The size of a transparent huge page on x86_64.
pub const HUGE_PAGE: u64 = 2 << 20;

/// Asks the host kernel to back every region of `mem` with transparent huge pages as the guest
/// touches it. Returns how many regions start on a 2 MiB boundary in the host's address space:
/// only those can also be mapped into the guest with 2 MiB pages (the guest's RAM regions are
/// 2 MiB aligned; host kernels since 6.7 align large anonymous mappings themselves).
pub fn use_transparent_huge_pages(mem: &GuestMemoryMmap) -> Result<usize, MemoryError> {
    let mut aligned = 0;
    for region in mem.iter() {
        let host = region.as_ptr();
        // SAFETY: `host` and `len` are exactly one mapping owned by `mem`; MADV_HUGEPAGE only
        // changes how the kernel backs it, never its contents or its validity.
        let r = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if r != 0 {
            return Err(MemoryError::HugePages(std::io::Error::last_os_error()));
        }
        if (host as u64).is_multiple_of(HUGE_PAGE) {
            aligned += 1;
        }
    }
    Ok(aligned)
}

/// Maps `size` bytes of guest RAM laid out as `arch::x86_64::memory::ram_regions` says.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = arch::x86_64::memory::ram_regions(size)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|l| (GuestAddress(start), l))
                .map_err(|_| MemoryError::TooLarge(len))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(size >> 20, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_follow_the_layout() {
        let m = create_guest_memory(64 << 20).expect("map");
        assert_eq!(m.num_regions(), 1);
        m.write_obj(0xabu8, GuestAddress((64 << 20) - 1))
            .expect("last byte");
        assert!(m.write_obj(0u8, GuestAddress(64 << 20)).is_err());
        let big = create_guest_memory(5 << 30).expect("map lazily");
        assert_eq!(big.num_regions(), 2);
        assert!(
            big.write_obj(1u8, GuestAddress(0xC000_0000)).is_err(),
            "MMIO gap has no RAM"
        );
        big.write_obj(1u8, GuestAddress((6u64 << 30) - 1))
            .expect("top of high RAM");
    }

    fn smaps_flag(addr: usize, flag: &str) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut in_region = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        in_region = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if in_region && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|f| f == flag);
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn huge_pages_are_advised_per_region() {
        let m = create_guest_memory(5 << 30).expect("map lazily");
        let hosts: Vec<usize> = m.iter().map(|r| r.as_ptr() as usize).collect();
        assert!(
            hosts.iter().all(|&h| !smaps_flag(h, "hg")),
            "not advised yet"
        );
        let aligned = use_transparent_huge_pages(&m).expect("madvise");
        assert!(aligned <= 2);
        assert!(
            hosts.iter().all(|&h| smaps_flag(h, "hg")),
            "MADV_HUGEPAGE on both regions"
        );
    }
}
