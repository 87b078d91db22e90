//! Loading what the guest boots: the kernel (ELF `vmlinux` through linux-loader, entered via
//! PVH when the image carries the PVH note and via the 64-bit boot protocol otherwise, or a
//! bzImage), the initramfs (placed as high in low RAM as the kernel allows, page-aligned,
//! as Documentation/arch/x86/boot.rst asks), the command line, and the boot structures from
//! the `arch` crate (zero page or PVH start info, GDT, page tables, MP table).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use arch::x86_64::boot_params::{build_pvh_info, build_zero_page, Initrd};
use arch::x86_64::layout::{
    CMDLINE, CMDLINE_DEFAULT_LIMIT, CMDLINE_MAX, GDT, HIMEM_START, MPTABLE, PVH_INFO, PVH_MEMMAP,
    PVH_MODLIST, ZERO_PAGE,
};
use arch::x86_64::memory::low_ram_end;
use arch::x86_64::regs::{gdt_for, BootProtocol};

use crate::memory::GuestMemoryMmap;

const PAGE_SIZE: u64 = 4096;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `initrd_addr_max` for kernels whose header predates boot protocol 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("Cannot read kernel image {0}")]
    ReadKernel(PathBuf, #[source] std::io::Error),
    /// linux-loader rejected the image.
    #[error("{path} is not a loadable kernel ({kind}): {reason}")]
    BadKernel {
        /// The kernel path.
        path: PathBuf,
        /// What it looked like.
        kind: &'static str,
        /// Why loading failed: linux-loader's innermost message.
        reason: String,
    },
    /// The initramfs cannot be read.
    #[error("Cannot read initramfs {0}")]
    ReadInitrd(PathBuf, #[source] std::io::Error),
    /// The initramfs does not fit in guest memory below the kernel's limit.
    #[error("Initramfs {path} ({size} bytes) does not fit in guest memory")]
    InitrdTooLarge {
        /// The initramfs path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("Cannot copy initramfs {0} into guest memory")]
    CopyInitrd(PathBuf, #[source] vm_memory::GuestMemoryError),
    /// The command line is longer than the kernel accepts.
    #[error("Kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length without the NUL.
        len: usize,
        /// Longest accepted, without the NUL.
        max: usize,
    },
    /// Writing to guest memory failed.
    #[error("Cannot write the {0} into guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// linux-loader's configurator failed.
    #[error("Cannot write the boot parameters")]
    Configurator(#[source] linux_loader::configurator::Error),
    /// Building boot structures failed.
    #[error("Cannot build the boot parameters")]
    BootParams(#[from] arch::x86_64::boot_params::BootParamsError),
    /// Building the MP table failed.
    #[error("Cannot build the MP table")]
    Mptable(#[from] arch::x86_64::mptable::MptableError),
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub protocol: BootProtocol,
    /// Guest-physical entry point.
    pub entry: u64,
    /// End of what the kernel occupies: the loaded image, and for a bzImage also the range it
    /// decompresses itself into (`init_size`), which the initramfs must stay clear of.
    pub end: u64,
    /// The bzImage setup header, if any.
    pub header: Option<setup_header>,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_max: usize,
    /// Highest address the initramfs may occupy.
    pub initrd_addr_max: u64,
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |e| BootError::ReadKernel(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(read_err)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let himem = Some(GuestAddress(HIMEM_START));
    if n == 4 && magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, himem).map_err(|e| BootError::BadKernel {
            path: path.to_path_buf(),
            kind: "ELF",
            reason: innermost(&e),
        })?;
        let (protocol, entry) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (BootProtocol::Pvh, addr.0),
            _ => (BootProtocol::Linux64, r.kernel_load.0),
        };
        Ok(LoadedKernel {
            protocol,
            entry,
            end: r.kernel_end,
            header: None,
            cmdline_max: CMDLINE_DEFAULT_LIMIT - 1,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        })
    } else {
        let r = BzImage::load(mem, None, &mut file, himem).map_err(|e| BootError::BadKernel {
            path: path.to_path_buf(),
            kind: "not ELF, tried bzImage",
            reason: innermost(&e),
        })?;
        let header = r.setup_header.unwrap_or_default();
        let version = header.version;
        // Ember enters a bzImage at its 64-bit entry: protocol 2.12+ announces it.
        if version < 0x20c || header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::BadKernel {
                path: path.to_path_buf(),
                kind: "bzImage",
                reason: format!(
                    "no 64-bit entry point (boot protocol {}.{:02}, needs 2.12 with XLF_KERNEL_64)",
                    version >> 8,
                    version & 0xff
                ),
            });
        }
        // The kernel decompresses itself into [max(pref_address, load aligned up to
        // kernel_alignment), + init_size) (boot protocol 2.10+): nothing may be placed there.
        let load = r.kernel_load.0;
        let align = u64::from(header.kernel_alignment).max(1);
        let runtime_start = load
            .checked_next_multiple_of(align)
            .unwrap_or(load)
            .max(header.pref_address);
        let runtime_end = runtime_start.saturating_add(u64::from(header.init_size));
        let cmdline_max = if version >= 0x206 {
            (header.cmdline_size as usize).min(CMDLINE_MAX - 1)
        } else {
            255
        };
        let initrd_addr_max = if version >= 0x203 && header.initrd_addr_max != 0 {
            u64::from(header.initrd_addr_max)
        } else {
            DEFAULT_INITRD_ADDR_MAX
        };
        Ok(LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: r.kernel_end.max(runtime_end),
            header: Some(header),
            cmdline_max,
            initrd_addr_max,
        })
    }
}

/// The innermost message of a linux-loader error (its outer ones repeat it).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
        .trim_start_matches("Kernel Loader: ")
        .to_string()
}

/// Copies the initramfs at `path` as high as allowed in low RAM; returns where it went.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<Initrd, BootError> {
    let read_err = |e| BootError::ReadInitrd(path.to_path_buf(), e);
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let top = low_ram_end(mem_size).min(kernel.initrd_addr_max.saturating_add(1));
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel.end.max(HIMEM_START) {
        return Err(too_large());
    }
    let count = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|e| BootError::CopyInitrd(path.to_path_buf(), e))?;
    Ok(Initrd { addr, size })
}

/// Writes the command line and the boot structures the kernel reads at entry.
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u8,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    if cmdline.len() > kernel.cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: kernel.cmdline_max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|e| BootError::Write("command line", e))?;

    let gdt = gdt_for(kernel.protocol);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT + (i * 8) as u64))
            .map_err(|e| BootError::Write("GDT", e))?;
    }
    if kernel.protocol == BootProtocol::Linux64 {
        for (addr, value) in arch::x86_64::paging::identity_map_entries() {
            mem.write_obj(value, GuestAddress(addr))
                .map_err(|e| BootError::Write("page tables", e))?;
        }
    }
    let mptable = arch::x86_64::mptable::build_mptable(vcpus)?;
    mem.write_slice(&mptable, GuestAddress(MPTABLE))
        .map_err(|e| BootError::Write("MP table", e))?;

    match kernel.protocol {
        BootProtocol::Linux64 => {
            let params = build_zero_page(kernel.header, mem_size, cmdline.len(), initrd)?;
            let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
                .map_err(BootError::Configurator)?;
        }
        BootProtocol::Pvh => {
            let info = build_pvh_info(mem_size, initrd);
            let mut bp = BootParams::new(&info.start_info, GuestAddress(PVH_INFO));
            bp.set_sections(&info.memmap, GuestAddress(PVH_MEMMAP));
            if !info.modules.is_empty() {
                bp.set_modules(&info.modules, GuestAddress(PVH_MODLIST));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
                .map_err(BootError::Configurator)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, content).expect("temp file");
        p
    }

    #[test]
    fn garbage_and_truncated_kernels_are_rejected() {
        let mem = create_guest_memory(16 << 20).expect("map");
        let junk = temp("junk", &[0x55; 8192]);
        assert!(matches!(
            load_kernel(&mem, &junk),
            Err(BootError::BadKernel { .. })
        ));
        let empty = temp("empty", b"");
        assert!(matches!(
            load_kernel(&mem, &empty),
            Err(BootError::BadKernel { .. })
        ));
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(40, 0);
        let trunc = temp("trunc", &elf);
        assert!(matches!(
            load_kernel(&mem, &trunc),
            Err(BootError::BadKernel { kind: "ELF", .. })
        ));
        for p in [junk, empty, trunc] {
            let _ = std::fs::remove_file(p);
        }
    }

    fn fake_kernel() -> LoadedKernel {
        LoadedKernel {
            protocol: BootProtocol::Linux64,
            entry: HIMEM_START,
            end: HIMEM_START + 0x1000,
            header: None,
            cmdline_max: 2047,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        }
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let mem = create_guest_memory(16 << 20).expect("map");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let p = temp("initrd", &data);
        let i = load_initrd(&mem, 16 << 20, &fake_kernel(), &p).expect("fits");
        assert_eq!(i.addr % PAGE_SIZE, 0);
        assert!(i.addr + i.size <= 16 << 20);
        assert!(i.addr > (16 << 20) - 16384);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(i.addr))
            .expect("read");
        assert_eq!(back, data);
        let huge = temp("huge", &vec![0u8; 16 << 20]);
        assert!(matches!(
            load_initrd(&mem, 16 << 20, &fake_kernel(), &huge),
            Err(BootError::InitrdTooLarge { .. })
        ));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(huge);
    }

    #[test]
    fn cmdline_limit_and_zero_page() {
        let mem = create_guest_memory(16 << 20).expect("map");
        let k = fake_kernel();
        let long = "x".repeat(2048);
        assert!(matches!(
            write_boot_structures(&mem, 16 << 20, 1, &k, &long, None),
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        write_boot_structures(&mem, 16 << 20, 2, &k, "console=ttyS0", None).expect("fits");
        let mut cl = [0u8; 14];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE))
            .expect("read");
        assert_eq!(&cl, b"console=ttyS0\0");
        let ptr: u32 = mem
            .read_obj(GuestAddress(ZERO_PAGE + 0x228))
            .expect("cmd_line_ptr");
        assert_eq!(u64::from(ptr), CMDLINE);
        let sig: [u8; 4] = mem.read_obj(GuestAddress(MPTABLE)).expect("mp");
        assert_eq!(&sig, b"_MP_");
    }
}
