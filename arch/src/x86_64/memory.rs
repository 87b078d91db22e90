//! Guest RAM layout: the RAM regions backing a guest of a given size, and the e820 map the
//! guest sees. RAM runs from 0 up to the 32-bit MMIO gap and resumes at 4 GiB (the usual PC
//! hole), so guests of 4 GiB and more keep all their memory.

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// Type of an e820 entry the guest may use as RAM.
pub const E820_RAM: u32 = 1;
/// Type of a reserved e820 entry.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry: `(start, size, type)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The RAM regions `(guest-physical start, size)` for `mem_size` bytes of guest memory.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map for `mem_size` bytes of RAM: conventional memory below the EBDA, then RAM from
/// 1 MiB to the gap, then RAM above 4 GiB. The EBDA (MP table) and the BIOS area stay out.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, 256 << 20);
    }

    #[test]
    fn large_guest_skips_the_gap() {
        let mem = 4u64 << 30;
        let regions = ram_regions(mem);
        assert_eq!(regions, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), mem);
        let map = e820_map(mem);
        assert_eq!(
            map.last().map(|e| (e.addr, e.size)),
            Some((4 << 30, 1 << 30))
        );
        // No RAM entry overlaps the gap.
        for e in &map {
            assert!(e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn exactly_the_gap_start_is_one_region() {
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }
}
