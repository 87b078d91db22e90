//! Per-vCPU CPUID (Intel SDM vol. 2A "CPUID"): the host's supported set from
//! `KVM_GET_SUPPORTED_CPUID`, with each vCPU's APIC ID and the package topology (leaves 0x1,
//! 0x4, 0xb, 0x1f) filled in and the hypervisor bit set. The local APIC's TSC-deadline mode and
//! ARAT (an APIC timer that keeps running in deep C-states) are always announced: KVM emulates
//! both, and with them a guest needs no PIT (Ember has none), as Linux's `apic_needs_pit()`
//! decides.
//!
//! It also holds the *PVM compatibility CPU model*: on hosts whose KVM runs guest kernels under
//! an instruction emulator (kvm-pvm), the features whose instructions that emulator lacks are
//! hidden from the guest, and `PVM_GUEST_CMDLINE` tells Linux the same.

use kvm_bindings::kvm_cpuid_entry2;

/// Guest kernel options that match the PVM compatibility CPU model: no XSAVE, kernel rodata
/// left writable (`rodata=off`: marking it read-only costs seconds under the emulator), and
/// `clearcpuid=` (bit numbers of Linux 6.1's cpufeatures.h) for
/// CX16, POPCNT, SMAP/SMEP, FSGSBASE, PCID, INVPCID, RDSEED, RDRAND, AVX*, XSAVE, MOVBE,
/// AES, PCLMULQDQ, SSE4.x, SSSE3, CLFLUSHOPT/CLWB, BMI1/2, UMIP, RDPID and PKU; and ERMS and
/// FSRM. The guest sees leaf 7 from the host whatever the CPUID table says (its
/// `/proc/cpuinfo` listed erms, fsrm, adx and f16c while the table had leaf 7 zeroed and F16C
/// cleared), and with those two Linux copies and clears with `rep movsb`/`stosb`, which the
/// emulator runs byte by byte (a 64 KiB copy measured 7.6x slower than with `rep movsq`; 2 MiB
/// through a guest pipe took 20 s against 8 s); hidden, the guest takes its REP_GOOD
/// `rep movsq` routines. The `clearcpuid=` value must stay under 128 characters (Linux 6.1
/// cuts it silently there).
///
/// And larger TCP segmentation-offload frames, up to 64 KiB (`tcp_min_tso_segs=44`, from 2):
/// TCP sizes them by its pacing rate, and a guest kernel this slow paced itself down to two
/// MSS a frame, each costing it ~27 ms of emulated work; so a guest sent 1 MiB 5.5x faster
/// (0.52 against 0.094 MiB/s, 34 frames instead of 384). A tuning rather than a missing
/// instruction: the guest can set it back at run time (`/proc/sys/net/ipv4/tcp_min_tso_segs`),
/// since these options come after the user's command line and so win at boot. A kernel
/// without TCP logs that it has no such setting and goes on.
pub const PVM_GUEST_CMDLINE: &str = "noxsave rodata=off clearcpuid=141,151,308,295,288,145,298,306,158,156,154,150,153,129,147,148,137,311,312,291,296,293,304,514,534,515,516,297,580 sysctl.net.ipv4.tcp_min_tso_segs=44";

/// (leaf, subleaf or None for all, register, bit) hidden by the PVM compatibility model.
const PVM_HIDDEN: &[(u32, Option<u32>, Reg, u32)] = &[
    (1, None, Reg::Ecx, 0),           // PCLMULQDQ
    (1, None, Reg::Ecx, 9),           // SSSE3
    (1, None, Reg::Ecx, 12),          // FMA
    (1, None, Reg::Ecx, 13),          // CX16 (cmpxchg16b)
    (1, None, Reg::Ecx, 17),          // PCID
    (1, None, Reg::Ecx, 19),          // SSE4.1
    (1, None, Reg::Ecx, 20),          // SSE4.2
    (1, None, Reg::Ecx, 22),          // MOVBE
    (1, None, Reg::Ecx, 23),          // POPCNT
    (1, None, Reg::Ecx, 25),          // AES
    (1, None, Reg::Ecx, 26),          // XSAVE
    (1, None, Reg::Ecx, 27),          // OSXSAVE
    (1, None, Reg::Ecx, 28),          // AVX
    (1, None, Reg::Ecx, 29),          // F16C
    (1, None, Reg::Ecx, 30),          // RDRAND
    (7, Some(0), Reg::Ebx, 0),        // FSGSBASE
    (7, Some(0), Reg::Ebx, 3),        // BMI1
    (7, Some(0), Reg::Ebx, 5),        // AVX2
    (7, Some(0), Reg::Ebx, 7),        // SMEP
    (7, Some(0), Reg::Ebx, 8),        // BMI2
    (7, Some(0), Reg::Ebx, 10),       // INVPCID
    (7, Some(0), Reg::Ebx, 16),       // AVX512F
    (7, Some(0), Reg::Ebx, 18),       // RDSEED
    (7, Some(0), Reg::Ebx, 19),       // ADX
    (7, Some(0), Reg::Ebx, 20),       // SMAP
    (7, Some(0), Reg::Ebx, 23),       // CLFLUSHOPT
    (7, Some(0), Reg::Ebx, 24),       // CLWB
    (7, Some(0), Reg::Ecx, 2),        // UMIP
    (7, Some(0), Reg::Ecx, 3),        // PKU
    (7, Some(0), Reg::Ecx, 4),        // OSPKE
    (7, Some(0), Reg::Ecx, 22),       // RDPID
    (0x8000_0001, None, Reg::Ecx, 5), // ABM (lzcnt)
];

#[derive(Clone, Copy, Debug)]
enum Reg {
    Ebx,
    Ecx,
}

/// What to build for one vCPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuidParams {
    /// This vCPU's index, which is also its APIC ID.
    pub vcpu_id: u8,
    /// Number of vCPUs in the VM.
    pub vcpu_count: u8,
    /// Apply the PVM compatibility CPU model.
    pub pvm_compat: bool,
}

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF6_EAX_ARAT: u32 = 1 << 2;
const AMD_CMP_LEGACY: u32 = 1 << 1;
const AMD_TOPOEXT: u32 = 1 << 22;
const LEAF1_EDX_HTT: u32 = 1 << 28;

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// KVM's hypervisor signature leaf; its EAX is the highest hypervisor leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// The timing leaf (EAX = TSC kHz, EBX = LAPIC bus kHz), as Firecracker and QEMU (`invtsc`)
/// report it, so guests need not calibrate.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's LAPIC timer runs at 1 GHz.
const LAPIC_BUS_KHZ: u32 = 1_000_000;

/// The timing leaf for a TSC of `tsc_khz`; raise the signature leaf's EAX to `TIMING_LEAF`.
pub fn timing_leaf(tsc_khz: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: TIMING_LEAF,
        eax: tsc_khz,
        ebx: LAPIC_BUS_KHZ,
        ..Default::default()
    }
}

/// Adjusts the host-supported CPUID `entries` for one vCPU, in place.
pub fn filter_cpuid(entries: &mut [kvm_cpuid_entry2], p: CpuidParams) {
    let apic_id = u32::from(p.vcpu_id);
    let count = u32::from(p.vcpu_count.max(1));
    // One package, `count` cores, one thread per core.
    let core_bits = ceil_log2(count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (apic_id << 24) | (e.ebx & 0xff00) | ((count & 0xff) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Cores per package - 1 in bits 31:26; one thread shares each cache level
                // unless it is the last level, shared by the whole package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                // Both fields saturate (6 and 12 bits): 65 vCPUs must not read as one core.
                e.eax =
                    (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | ((count - 1).min(0x3f) << 26);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            HYPERVISOR_LEAF => e.eax = e.eax.max(TIMING_LEAF),
            // AMD: package topology is NC (cores - 1) and ApicIdCoreIdSize in 0x80000008 ECX;
            // the extended topology leaf 0x8000001e (TOPOEXT) is hidden rather than faked, and
            // CmpLegacy tells the guest the logical processors are cores, not threads.
            0x8000_0001 => {
                e.ecx &= !AMD_TOPOEXT;
                if count > 1 {
                    e.ecx |= AMD_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_CMP_LEGACY;
                }
            }
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff),
            0x8000_001e => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xd if p.pvm_compat => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
        if p.pvm_compat {
            restrict_to_kvm64(e);
            for &(leaf, sub, reg, bit) in PVM_HIDDEN {
                if e.function == leaf && sub.is_none_or(|s| s == e.index) {
                    match reg {
                        Reg::Ebx => e.ebx &= !(1 << bit),
                        Reg::Ecx => e.ecx &= !(1 << bit),
                    }
                }
            }
        }
        match e.function {
            0x1 => e.ecx |= LEAF1_ECX_TSC_DEADLINE,
            0x6 => e.eax |= LEAF6_EAX_ARAT,
            _ => {}
        }
    }
}

/// Leaf 1 EDX features of QEMU's `kvm64` model: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP
/// MTRR PGE MCA CMOV PAT PSE36 CLFLUSH MMX FXSR SSE SSE2.
const KVM64_LEAF1_EDX: u32 =
    0x07cb_fbff & !(1 << 10) & !(1 << 18) & !(1 << 20) & !(1 << 21) & !(1 << 22);
/// Leaf 1 ECX: SSE3, x2APIC and the hypervisor bit.
const KVM64_LEAF1_ECX: u32 = (1 << 0) | (1 << 21) | LEAF1_ECX_HYPERVISOR;
/// 0x8000_0001 EDX: SYSCALL, NX, LM (and the leaf-1 copies AMD keeps there).
const KVM64_EXT_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29) | (KVM64_LEAF1_EDX & 0x0183_f3ff);
/// 0x8000_0001 ECX: LAHF/SAHF in long mode and CmpLegacy.
const KVM64_EXT_ECX: u32 = (1 << 0) | AMD_CMP_LEGACY;

/// The PVM compatibility model proper: the feature set of QEMU's `kvm64` CPU (the model
/// kvm-pvm guests were seen to boot with, SMP included), keeping the host's vendor, family and
/// the topology set above. Newer features (leaf 7, XSAVE, PMU, speculation controls, invariant
/// TSC) and leaves beyond kvm64's (basic 0xd, extended 0x8000_0008: no 0xb/0x1f topology, no
/// AMD 0x8000_001d..) are hidden: with them a 6.1 guest hung bringing up secondary CPUs on
/// kvm-pvm, under Ember and QEMU alike, while QEMU's kvm64 model booted.
fn restrict_to_kvm64(e: &mut kvm_cpuid_entry2) {
    let beyond_basic = (0xe..HYPERVISOR_LEAF).contains(&e.function);
    let beyond_ext = e.function > 0x8000_0008 && e.function < 0xc000_0000;
    if beyond_basic || beyond_ext {
        e.eax = 0;
        e.ebx = 0;
        e.ecx = 0;
        e.edx = 0;
        return;
    }
    match e.function {
        // Highest basic and extended leaves as kvm64 has them.
        0x0 => e.eax = e.eax.min(0xd),
        0x8000_0000 => e.eax = e.eax.min(0x8000_0008),
        0xb => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
        }
        0x1 => {
            e.edx &= KVM64_LEAF1_EDX;
            e.ecx &= KVM64_LEAF1_ECX;
        }
        0x6 | 0xa | 0xd | 0x14 | 0x8000_0007 => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0x7 => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0x8000_0001 => {
            e.edx &= KVM64_EXT_EDX;
            e.ecx &= KVM64_EXT_ECX;
        }
        0x8000_0008 => e.ebx = 0,
        // KVM paravirt features as QEMU enables them by default: kvmclock (both MSR sets and
        // the stable bit), no I/O delay, async page faults, steal time, PV EOI. Not the
        // hypercall-based ones (PV IPIs, PV TLB flush, PV sched yield, PV unhalt): with PV
        // IPIs a guest on kvm-pvm never brought its secondary CPUs up.
        KVM_FEATURES_LEAF => e.eax &= KVM_FEATURES_QEMU_DEFAULT,
        _ => {}
    }
}

/// KVM's paravirt feature leaf.
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, ASYNC_PF, STEAL_TIME, PV_EOI, CLOCKSOURCE_STABLE_BIT.
const KVM_FEATURES_QEMU_DEFAULT: u32 =
    (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 24);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn the_clearcpuid_value_fits_linux_buffer() {
        // Linux 6.1 copies the value into a 128-byte buffer and cuts it silently, which
        // would clear a wrong bit; and each bit must be a valid cpufeatures.h number.
        let value = PVM_GUEST_CMDLINE
            .split_whitespace()
            .find_map(|w| w.strip_prefix("clearcpuid="))
            .expect("a clearcpuid option");
        assert!(value.len() < 128, "{} characters", value.len());
        for bit in value.split(',') {
            let n: u32 = bit.parse().expect("a bit number");
            assert!(n < 20 * 32, "bit {n} beyond 6.1's NCAPINTS");
        }
        assert!(value.split(',').any(|b| b == "297"), "ERMS");
        assert!(value.split(',').any(|b| b == "580"), "FSRM");
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0),
            entry(7, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xd, 0),
            entry(0x8000_0001, 0),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
            entry(KVM_FEATURES_LEAF, 0),
        ]
    }

    #[test]
    fn apic_id_and_topology() {
        let mut e = host();
        filter_cpuid(
            &mut e,
            CpuidParams {
                vcpu_id: 3,
                vcpu_count: 4,
                pvm_compat: false,
            },
        );
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!((e[2].edx, e[3].edx), (3, 3));
        assert_eq!((e[3].eax, e[3].ebx), (2, 4));
        // AMD: four cores in one package, no TOPOEXT.
        assert_eq!(e[6].ecx & 0xf0ff, (2 << 12) | 3);
        assert_eq!(e[5].ecx & AMD_TOPOEXT, 0);
        assert_ne!(e[5].ecx & AMD_CMP_LEGACY, 0);
        assert_eq!(e[7].eax | e[7].ebx | e[7].ecx, 0);
        // Without the compatibility model nothing is hidden.
        assert_eq!(e[1].ebx, 0xffff_ffff);
        assert_ne!(e[0].ecx & (1 << 13), 0);
    }

    #[test]
    fn apic_timer_features_in_both_models() {
        for pvm_compat in [false, true] {
            let mut e = vec![
                kvm_cpuid_entry2 {
                    function: 1,
                    ..Default::default()
                },
                kvm_cpuid_entry2 {
                    function: 6,
                    ..Default::default()
                },
            ];
            filter_cpuid(
                &mut e,
                CpuidParams {
                    vcpu_id: 0,
                    vcpu_count: 1,
                    pvm_compat,
                },
            );
            assert_ne!(
                e[0].ecx & LEAF1_ECX_TSC_DEADLINE,
                0,
                "TSC deadline, pvm={pvm_compat}"
            );
            assert_eq!(e[1].eax, LEAF6_EAX_ARAT, "ARAT only, pvm={pvm_compat}");
        }
    }

    #[test]
    fn pvm_model_hides_emulator_gaps() {
        let mut e = host();
        filter_cpuid(
            &mut e,
            CpuidParams {
                vcpu_id: 0,
                vcpu_count: 1,
                pvm_compat: true,
            },
        );
        assert_eq!(e[0].ecx & (1 << 13), 0, "CX16");
        assert_eq!(e[0].ecx & (1 << 23), 0, "POPCNT");
        assert_eq!(e[0].ecx & (1 << 26), 0, "XSAVE");
        assert_eq!(e[1].ebx & (1 << 20), 0, "SMAP");
        assert_eq!(e[4].eax, 0, "XSAVE leaf");
        assert_eq!(e[1].ebx | e[1].ecx | e[1].edx, 0, "no leaf-7 features");
        assert_eq!(e[0].edx & !KVM64_LEAF1_EDX, 0);
        assert_eq!(
            e[8].eax, KVM_FEATURES_QEMU_DEFAULT,
            "no hypercall-based PV features"
        );
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn log2() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(ceil_log2), [0, 1, 2, 2, 3, 8]);
    }
}
