//! Every fixed guest-physical address and size Ember uses on x86_64, in one place.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel loads at 1 MiB; guest RAM
//! above 3 GiB continues at 4 GiB, leaving the `MMIO_GAP` for devices, the IOAPIC and LAPIC.

/// Global descriptor table used at boot (4 entries of 8 bytes).
pub const GDT: u64 = 0x500;
/// Interrupt descriptor table (empty) used at boot.
pub const IDT: u64 = 0x520;
/// PVH `hvm_start_info` structure (PVH boot only; shares the page with the module list).
pub const PVH_INFO: u64 = 0x6000;
/// PVH module list (the initramfs), right after `hvm_start_info`.
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP: u64 = 0x7000;
/// Linux zero page (`struct boot_params`, 4 KiB; 64-bit boot protocol only).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, then one PDPT, then one PD (2 MiB pages, first 1 GiB).
pub const PML4: u64 = 0x9000;
/// Page-directory-pointer table of the boot page tables.
pub const PDPTE: u64 = 0xa000;
/// Page directory of the boot page tables.
pub const PDE: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Room reserved for the command line at `CMDLINE` (the kernel's own limit is usually lower).
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Longest command line an x86 Linux kernel accepts when the image does not say
/// (`COMMAND_LINE_SIZE` in arch/x86/include/asm/setup.h, including the NUL).
pub const CMDLINE_DEFAULT_LIMIT: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable, the MP table lives in it.
pub const EBDA_START: u64 = 0x9_fc00;
/// The MP floating pointer structure and table (at the start of the EBDA).
pub const MPTABLE: u64 = EBDA_START;
/// Where high memory begins and where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Firecracker-compatible boot-timer device: a guest writes 123 here once booted.
pub const BOOT_TIMER: u64 = MMIO_GAP_START;
/// Size of the boot-timer device's MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device window; each device takes `VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_START: u64 = 0xD000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The range virtio-mmio device windows are allocated from (more windows than there are
/// interrupt lines for them).
pub const VIRTIO_MMIO_WINDOW_SIZE: u64 = 0x10_0000;
/// IOAPIC MMIO base (served by `devices::legacy::Ioapic`).
pub const IOAPIC: u64 = 0xFEC0_0000;
/// Size of the IOAPIC's MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// LAPIC MMIO base (KVM's in-kernel local APICs serve it).
pub const LAPIC: u64 = 0xFEE0_0000;
/// KVM's TSS (three pages, needed on Intel before the first `KVM_RUN`).
pub const KVM_TSS: u64 = 0xFFFB_D000;
/// KVM's identity-map page (one page, just below the TSS).
pub const KVM_IDENTITY_MAP: u64 = 0xFFFB_C000;
/// I/O port of the 16550 UART COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ (GSI) of COM1.
pub const COM1_IRQ: u32 = 4;
/// I/O port of the i8042 data register (the command register is at +4).
pub const I8042_PORT: u16 = 0x60;
/// IRQ (GSI) of the i8042 keyboard.
pub const I8042_KBD_IRQ: u32 = 1;
/// I/O port of the guest exit device: a one-byte write ends the VM with that status; a write
/// to the next port (0xf5) powers the VM off.
pub const EXIT_PORT: u16 = 0xf4;
/// Ports the guest exit device spans (status, power-off).
pub const EXIT_PORT_SIZE: u64 = 2;
/// First GSI handed to virtio devices (the IOAPIC has 24 pins; 0-4 are legacy).
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last GSI usable by a device.
pub const IRQ_MAX: u32 = 23;
/// Largest number of vCPUs (APIC IDs 0..=253; 254 goes to the IOAPIC, 255 is broadcast).
pub const MAX_VCPUS: u8 = 254;

const _: () = assert!(GDT + 32 <= IDT);
const _: () = assert!(PVH_MODLIST + 32 <= PVH_MEMMAP);
const _: () = assert!(ZERO_PAGE + 0x1000 <= PML4);
const _: () = assert!(BOOT_STACK_POINTER < PML4);
const _: () = assert!(PDE + 0x1000 <= CMDLINE);
const _: () = assert!(CMDLINE + CMDLINE_MAX as u64 <= EBDA_START);
const _: () = assert!(BOOT_TIMER + BOOT_TIMER_SIZE <= VIRTIO_MMIO_START);
const _: () = assert!(VIRTIO_MMIO_START + VIRTIO_MMIO_WINDOW_SIZE <= IOAPIC);
const _: () = assert!(VIRTIO_MMIO_START < IOAPIC && IOAPIC < LAPIC && LAPIC < KVM_IDENTITY_MAP);
const _: () = assert!(KVM_IDENTITY_MAP + 0x1000 == KVM_TSS);
