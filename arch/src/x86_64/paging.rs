//! Identity page tables for the 64-bit boot protocol (Intel SDM vol. 3A §4.5): one PML4 entry,
//! one PDPT entry and 512 2-MiB pages, mapping the first 1 GiB, which the Linux 64-bit entry
//! requires for the kernel, the zero page and the command line. Written here because no
//! rust-vmm crate builds boot page tables.

use super::layout::{PDE, PDPTE, PML4};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// The page-table writes `(guest address, value)` that build the identity map.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut entries = Vec::with_capacity(514);
    entries.push((PML4, PDPTE | PRESENT_RW));
    entries.push((PDPTE, PDE | PRESENT_RW));
    for i in 0..512u64 {
        entries.push((PDE + i * 8, (i << 21) | PRESENT_RW | PAGE_SIZE_2M));
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_first_gigabyte_identically() {
        let e = identity_map_entries();
        assert_eq!(e[0], (PML4, PDPTE | 3));
        assert_eq!(e[1], (PDPTE, PDE | 3));
        assert_eq!(e[2], (PDE, 0x83));
        assert_eq!(e.last(), Some(&(PDE + 511 * 8, (511 << 21) | 0x83)));
        assert_eq!(e.len(), 514);
    }
}
