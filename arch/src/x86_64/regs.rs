//! Boot register state (Intel SDM vol. 3A §9, the Linux x86 boot protocol §"64-bit boot
//! protocol", and the PVH boot ABI): general registers, special registers, FPU and LAPIC
//! LINT pins. Pure builders over `kvm_bindings` structures; `vmm` applies them. Written here
//! because rust-vmm has no crate for an x86 vCPU's boot state.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};

use super::gdt::{boot_gdt, segment_from_gdt, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_STACK_POINTER, GDT, IDT, PML4, PVH_INFO, ZERO_PAGE};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, paging on, `%rsi` = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
}

/// General registers at the entry point `entry`.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO,
    }
    regs
}

/// The GDT to write at `layout::GDT` for `protocol`.
pub fn gdt_for(protocol: BootProtocol) -> [u64; 4] {
    boot_gdt(protocol == BootProtocol::Linux64)
}

/// Sets segments, descriptor tables and control registers in `sregs` for `protocol`.
pub fn configure_sregs(sregs: &mut kvm_sregs, protocol: BootProtocol) {
    let gdt = gdt_for(protocol);
    let code = segment_from_gdt(gdt[CODE_INDEX], CODE_INDEX);
    let data = segment_from_gdt(gdt[DATA_INDEX], DATA_INDEX);
    let tss = segment_from_gdt(gdt[TSS_INDEX], TSS_INDEX);

    sregs.gdt.base = GDT;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = state.regs[offset + i] as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// Configures LINT0 as ExtINT (the PIC, absent under Ember) and LINT1 as NMI, as a PC BIOS does
/// (Intel SDM vol. 3A §11.5.1: delivery mode in bits 8-10).
pub fn set_lint(state: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux64_registers() {
        let r = boot_regs(BootProtocol::Linux64, 0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE, BOOT_STACK_POINTER, 2)
        );
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s, BootProtocol::Linux64);
        assert_eq!(s.cr3, PML4);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn pvh_registers() {
        let r = boot_regs(BootProtocol::Pvh, 0x1000);
        assert_eq!((r.rip, r.rbx), (0x1000, PVH_INFO));
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s, BootProtocol::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!((s.cr4, s.efer, s.cs.l, s.cs.db), (0, 0, 0, 1));
    }

    #[test]
    fn lint_pins() {
        let mut st = kvm_lapic_state::default();
        set_lapic_reg(&mut st, APIC_LVT0, 0x1_0000 | 0x300);
        set_lint(&mut st);
        assert_eq!(lapic_reg(&st, APIC_LVT0), 0x1_0000 | 0x700);
        assert_eq!(lapic_reg(&st, APIC_LVT1), 0x400);
    }
}
