//! MP table (Intel MultiProcessor Specification 1.4, chapter 4) so that guests without ACPI
//! see every vCPU, the IOAPIC and the ISA interrupt routing.
//!
//! Written by hand: no maintained crate builds MP tables (Firecracker and Cloud Hypervisor
//! each carry their own), and the format is a few fixed-size little-endian records.
//! Not supported: PCI buses (Ember has none) and the extended table.

use super::layout::{IOAPIC, IRQ_MAX, LAPIC, MPTABLE};

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const ENTRY_LEN: usize = 8;
const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
// CPU signature family 6 with the FPU and APIC feature flags, as real firmware reports.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINTR: u8 = 3;
const ENTRY_LOCALINTR: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The VM has no vCPUs or more than the table can name.
    #[error("Cannot describe {0} vCPUs in the MP table")]
    VcpuCount(u8),
}

/// Size in bytes of the MP structures for `vcpus` CPUs.
pub const fn mptable_size(vcpus: u8) -> usize {
    FLOATING_LEN
        + HEADER_LEN
        + PROCESSOR_LEN * vcpus as usize
        + ENTRY_LEN * (2 + (IRQ_MAX as usize + 1) + 2)
}

const _: () =
    assert!(MPTABLE + mptable_size(super::layout::MAX_VCPUS) as u64 <= super::layout::HIMEM_START);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP floating pointer followed by the configuration table, to be written at
/// `layout::MPTABLE`. The IOAPIC takes the APIC ID after the last vCPU.
pub fn build_mptable(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > super::layout::MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpus));
    }
    let table_addr = MPTABLE + FLOATING_LEN as u64;
    let ioapic_id = vcpus;

    // Floating pointer structure.
    let mut fp = Vec::with_capacity(FLOATING_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte paragraphs
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    fp[10] = checksum(&fp);

    // Entries.
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC as u32).to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[ENTRY_IOINTR, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // LINT0 ExtINT and LINT1 NMI on every local APIC, the PC wiring (Ember has no PIC, so
    // nothing ever arrives on LINT0).
    entries.extend_from_slice(&[ENTRY_LOCALINTR, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINTR, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let entry_count = u16::from(vcpus) + 2 + (IRQ_MAX as u16 + 1) + 2;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"EMBER   ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(LAPIC as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 4, 254] {
            let t = build_mptable(n).expect("valid count");
            assert_eq!(t.len(), mptable_size(n));
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            assert_eq!(&t[16..20], b"PCMP");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(sum(&t[16..]), 0);
            let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
            assert_eq!(count, u16::from(n) + 28);
            // Processor entries: APIC IDs 0..n, BSP flag only on the first.
            let procs = &t[16 + 44..];
            for cpu in 0..n as usize {
                let e = &procs[cpu * 20..];
                assert_eq!((e[0], e[1]), (0, cpu as u8));
                assert_eq!(e[3] & 2 != 0, cpu == 0);
            }
        }
    }

    #[test]
    fn rejects_bad_counts() {
        assert_eq!(build_mptable(0), Err(MptableError::VcpuCount(0)));
        assert_eq!(build_mptable(255), Err(MptableError::VcpuCount(255)));
    }
}
