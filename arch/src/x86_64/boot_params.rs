//! What the kernel reads at entry: the Linux zero page (`struct boot_params`, Documentation/
//! arch/x86/boot.rst and zero-page.rst) for the 64-bit boot protocol, or the PVH
//! `hvm_start_info` with its memory map and module list (xen/include/public/arch-x86/hvm/
//! start_info.h) for the PVH entry. Both carry the command line, the initramfs and the e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};

use super::layout::{CMDLINE, PVH_MEMMAP, PVH_MODLIST};
use super::memory::e820_map;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// The initramfs as loaded in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Errors building the boot structures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    /// The memory map does not fit the zero page.
    #[error("The e820 map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
}

/// Builds the zero page. `header` is the bzImage's setup header, or `None` for an ELF
/// `vmlinux` entered through the 64-bit protocol. `cmdline_size` excludes the NUL.
pub fn build_zero_page(
    header: Option<setup_header>,
    mem_size: u64,
    cmdline_size: usize,
    initrd: Option<Initrd>,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// The PVH boot structures: start info, memory map and module list, to be written at
/// `layout::PVH_INFO`, `layout::PVH_MEMMAP` and `layout::PVH_MODLIST`.
#[derive(Clone, Debug)]
pub struct PvhBootInfo {
    /// The `hvm_start_info` structure.
    pub start_info: hvm_start_info,
    /// The memory map.
    pub memmap: Vec<hvm_memmap_table_entry>,
    /// The modules (the initramfs, if any).
    pub modules: Vec<hvm_modlist_entry>,
}

/// Builds the PVH start info for `mem_size` bytes of RAM.
pub fn build_pvh_info(mem_size: u64, initrd: Option<Initrd>) -> PvhBootInfo {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST },
        cmdline_paddr: CMDLINE,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    PvhBootInfo {
        start_info,
        memmap,
        modules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_fields() {
        let p = build_zero_page(
            None,
            512 << 20,
            42,
            Some(Initrd {
                addr: 0x1000_0000,
                size: 4096,
            }),
        )
        .expect("fits");
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 4096);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.e820_table[1].size }, (512 << 20) - 0x10_0000);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let h = setup_header {
            version: 0x20f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let p = build_zero_page(Some(h), 128 << 20, 1, None).expect("fits");
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_info() {
        let i = build_pvh_info(
            6 << 30,
            Some(Initrd {
                addr: 0x100_0000,
                size: 10,
            }),
        );
        assert_eq!(i.start_info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(i.start_info.memmap_entries, 3);
        assert_eq!(i.start_info.nr_modules, 1);
        assert_eq!(i.modules[0].paddr, 0x100_0000);
        assert_eq!(i.memmap[2].addr, 4 << 30);
        let none = build_pvh_info(64 << 20, None);
        assert_eq!(
            (none.start_info.nr_modules, none.start_info.modlist_paddr),
            (0, 0)
        );
    }
}
