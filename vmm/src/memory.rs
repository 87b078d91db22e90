//! Guest RAM: anonymous private mappings (vm-memory's `GuestMemoryMmap`), one per RAM region
//! of the x86_64 layout, populated lazily by the host kernel as the guest touches them.

use vm_memory::GuestAddress;

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
}
