//! Boot GDT (Intel SDM vol. 3A §3.4.5): flat code and data segments, and the matching
//! `kvm_segment` values for the special registers. Two flavours: 64-bit long mode for the
//! Linux 64-bit boot protocol and 32-bit protected mode for the PVH entry.
//! Written here because no rust-vmm crate builds boot GDTs (each VMM has its own, as this).
//! Selectors 0x08 (code) and 0x10 (data) differ from boot.rst's __BOOT_CS/__BOOT_DS (0x10,
//! 0x18), as Firecracker's and Cloud Hypervisor's do: Linux loads its own GDT at once.

use kvm_bindings::kvm_segment;

/// Selector index of the code segment.
pub const CODE_INDEX: usize = 1;
/// Selector index of the data segment.
pub const DATA_INDEX: usize = 2;
/// Selector index of the TSS.
pub const TSS_INDEX: usize = 3;

/// Builds a GDT entry from flags, base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The four-entry boot GDT: null, code, data, TSS. `long_mode` picks a 64-bit code segment
/// (L=1) or a 32-bit one (D=1).
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code_flags = if long_mode { 0xa09b } else { 0xc09b };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Decodes GDT entry `index` of `table` into a `kvm_segment`.
pub fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let get_base = |e: u64| -> u64 {
        (((e) & 0xFF00_0000_0000_0000) >> 32)
            | (((e) & 0x0000_00FF_0000_0000) >> 16)
            | (((e) & 0x0000_0000_FFFF_0000) >> 16)
    };
    let limit = ((entry & 0x000F_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_FFFF);
    let g = ((entry & 0x0080_0000_0000_0000) >> 55) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 { (limit << 12) | 0xfff } else { limit };
    kvm_segment {
        base: get_base(entry),
        limit: limit as u32,
        selector: (index * 8) as u16,
        type_: ((entry & 0x0000_0F00_0000_0000) >> 40) as u8,
        present: ((entry & 0x0000_8000_0000_0000) >> 47) as u8,
        dpl: ((entry & 0x0000_6000_0000_0000) >> 45) as u8,
        db: ((entry & 0x0040_0000_0000_0000) >> 54) as u8,
        s: ((entry & 0x0000_1000_0000_0000) >> 44) as u8,
        l: ((entry & 0x0020_0000_0000_0000) >> 53) as u8,
        g,
        avl: ((entry & 0x0010_0000_0000_0000) >> 52) as u8,
        padding: 0,
        unusable: u8::from(((entry & 0x0000_8000_0000_0000) >> 47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let gdt = boot_gdt(true);
        let cs = segment_from_gdt(gdt[CODE_INDEX], CODE_INDEX);
        assert_eq!(cs.l, 1);
        assert_eq!(cs.db, 0);
        assert_eq!(cs.selector, 8);
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.present, 1);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn protected_mode_code_segment() {
        let gdt = boot_gdt(false);
        let cs = segment_from_gdt(gdt[CODE_INDEX], CODE_INDEX);
        assert_eq!((cs.l, cs.db), (0, 1));
        let ds = segment_from_gdt(gdt[DATA_INDEX], DATA_INDEX);
        assert_eq!((ds.type_, ds.selector, ds.s), (3, 16, 1));
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 2);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }

    #[test]
    fn null_entry_is_unusable() {
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
