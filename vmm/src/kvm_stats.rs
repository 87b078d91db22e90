//! vCPU exit counters from KVM's binary statistics (Linux `Documentation/virt/kvm/api.rst`,
//! "KVM_GET_STATS_FD"): each vCPU's statistics descriptor is opened once, before the vCPU
//! threads start, its layout (header, descriptors) read then, and the counters read on demand
//! with `pread` from whichever thread asks. The run loop counts nothing itself, so the figures
//! cost it nothing, and they include the exits KVM handles in the kernel (ioeventfd writes,
//! interrupt windows), which the VMM never sees. kvm-ioctls has no call for this ioctl, hence
//! the few lines here.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header, KVM_STATS_TYPE_MASK};
use serde::{Deserialize, Serialize};
use vmm_sys_util::ioctl::ioctl;

#[allow(missing_docs)]
mod nr {
    use kvm_bindings::KVMIO;
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);
}
use nr::KVM_GET_STATS_FD;

/// Exit counts of a VM, summed over its vCPUs (KVM's names). Which kinds a host kernel counts
/// is its own: kvm-pvm counts only `exits` and leaves the others at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCounts {
    /// Every exit from guest mode.
    pub exits: u64,
    /// Port I/O exits (ioeventfd writes included).
    pub io_exits: u64,
    /// MMIO exits that reached user space (ioeventfd writes, handled in the kernel, are
    /// not among them).
    pub mmio_exits: u64,
    /// Exits for host interrupts.
    pub irq_exits: u64,
    /// `hlt` exits.
    pub halt_exits: u64,
    /// Exits to deliver a signal (kicks, pauses).
    pub signal_exits: u64,
}

impl ExitCounts {
    /// The counts since `earlier` (zero where a counter went back).
    pub fn since(&self, earlier: &ExitCounts) -> ExitCounts {
        ExitCounts {
            exits: self.exits.saturating_sub(earlier.exits),
            io_exits: self.io_exits.saturating_sub(earlier.io_exits),
            mmio_exits: self.mmio_exits.saturating_sub(earlier.mmio_exits),
            irq_exits: self.irq_exits.saturating_sub(earlier.irq_exits),
            halt_exits: self.halt_exits.saturating_sub(earlier.halt_exits),
            signal_exits: self.signal_exits.saturating_sub(earlier.signal_exits),
        }
    }

    fn add(&mut self, o: &ExitCounts) {
        self.exits += o.exits;
        self.io_exits += o.io_exits;
        self.mmio_exits += o.mmio_exits;
        self.irq_exits += o.irq_exits;
        self.halt_exits += o.halt_exits;
        self.signal_exits += o.signal_exits;
    }

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "exits" => &mut self.exits,
            "io_exits" => &mut self.io_exits,
            "mmio_exits" => &mut self.mmio_exits,
            "irq_exits" => &mut self.irq_exits,
            "halt_exits" => &mut self.halt_exits,
            "signal_exits" => &mut self.signal_exits,
            _ => return None,
        })
    }
}

/// One vCPU's statistics descriptor and where its counters are.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    /// (byte offset in the file, which counter).
    counters: Vec<(u64, &'static str)>,
}

const NAMES: [&str; 6] = [
    "exits",
    "io_exits",
    "mmio_exits",
    "irq_exits",
    "halt_exits",
    "signal_exits",
];

impl VcpuStats {
    /// Opens the statistics of the vCPU `fd`; an error where the kernel has none (before 5.14).
    pub fn open(fd: &impl AsRawFd) -> std::io::Result<VcpuStats> {
        // SAFETY: an ioctl with no argument on a vCPU descriptor; the result is checked.
        let r = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just gave us and nobody else owns.
        let file = unsafe { File::from_raw_fd(r) };
        let counters = layout(&file)?;
        Ok(VcpuStats { file, counters })
    }

    /// The counters now.
    pub fn read(&self) -> std::io::Result<ExitCounts> {
        let mut c = ExitCounts::default();
        let mut buf = [0u8; 8];
        for &(off, name) in &self.counters {
            self.file.read_exact_at(&mut buf, off)?;
            if let Some(slot) = c.slot(name) {
                *slot = u64::from_ne_bytes(buf);
            }
        }
        Ok(c)
    }
}

/// A VM's statistics descriptors while it runs, then its last counts: shared by the VM's
/// handle, which reads them, and the VM's owner, which closes the descriptors once the vCPUs
/// have stopped (each descriptor holds a reference on the kernel's VM, which would otherwise
/// outlive the VM's end until the handle goes).
#[derive(Debug)]
pub struct ExitStats(Mutex<Slot>);

#[derive(Debug)]
enum Slot {
    Live(Vec<VcpuStats>),
    Final(Option<ExitCounts>),
}

impl ExitStats {
    /// Counts of `stats`, one per vCPU (none: the kernel keeps no statistics).
    pub fn new(stats: Vec<VcpuStats>) -> Self {
        ExitStats(Mutex::new(if stats.is_empty() {
            Slot::Final(None)
        } else {
            Slot::Live(stats)
        }))
    }

    /// The counts now, or at the VM's end once it has ended.
    pub fn counts(&self) -> Option<ExitCounts> {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Slot::Live(stats) => total(stats).ok(),
            Slot::Final(c) => *c,
        }
    }

    /// Keeps the last counts and closes the descriptors (the vCPUs have stopped).
    pub fn finish(&self) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Slot::Live(stats) = &*slot {
            *slot = Slot::Final(total(stats).ok());
        }
    }
}

/// Sums `stats` over a VM's vCPUs.
pub fn total(stats: &[VcpuStats]) -> std::io::Result<ExitCounts> {
    let mut sum = ExitCounts::default();
    for s in stats {
        sum.add(&s.read()?);
    }
    Ok(sum)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("KVM statistics: {what}"),
    )
}

/// Reads the header and descriptors: the file offsets of the counters Ember reports.
fn layout(file: &File) -> std::io::Result<Vec<(u64, &'static str)>> {
    let mut h = [0u8; std::mem::size_of::<kvm_stats_header>()];
    file.read_exact_at(&mut h, 0)?;
    let word = |i: usize| u32::from_ne_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
    let (name_size, num_desc, desc_offset, data_offset) = (word(1), word(2), word(4), word(5));
    let fixed = std::mem::size_of::<kvm_stats_desc>();
    let desc_size = fixed + name_size as usize;
    if num_desc > 4096 || name_size > 4096 {
        return Err(bad("implausible header"));
    }
    let mut descs = vec![0u8; desc_size * num_desc as usize];
    file.read_exact_at(&mut descs, u64::from(desc_offset))?;
    let mut counters = Vec::new();
    for d in descs.chunks_exact(desc_size) {
        let flags = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
        let size = u16::from_ne_bytes([d[6], d[7]]);
        let offset = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
        let name = &d[fixed..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        let Some(&known) = NAMES.iter().find(|n| n.as_bytes() == name) else {
            continue;
        };
        // Plain cumulative 64-bit counters only (size counts u64 values).
        if size != 1 || flags & KVM_STATS_TYPE_MASK != 0 {
            continue;
        }
        counters.push((u64::from(data_offset) + u64::from(offset), known));
    }
    if !counters.iter().any(|c| c.1 == "exits") {
        return Err(bad("no exits counter"));
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_saturate() {
        let a = ExitCounts {
            exits: 10,
            io_exits: 4,
            ..Default::default()
        };
        let b = ExitCounts {
            exits: 25,
            io_exits: 3,
            ..Default::default()
        };
        let d = b.since(&a);
        assert_eq!((d.exits, d.io_exits), (15, 0));
    }

    #[test]
    fn a_vcpu_counts_its_exits() {
        if !testkit::require_kvm() {
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().expect("kvm");
        let vm = kvm.create_vm().expect("vm");
        let vcpu = vm.create_vcpu(0).expect("vcpu");
        // The layout parses and has the total (`open` fails without it); a vCPU that never
        // ran has none. Counting is tested end to end in tests/boot_tiny.rs.
        let stats = VcpuStats::open(&vcpu).expect("stats");
        let before = stats.read().expect("read");
        assert_eq!(before.exits, 0, "a vCPU that never ran has no exits");
        let shared = ExitStats::new(vec![stats]);
        assert_eq!(shared.counts(), Some(before));
        shared.finish();
        assert_eq!(shared.counts(), Some(before), "the last counts stay");
        assert_eq!(ExitStats::new(Vec::new()).counts(), None);
    }
}
