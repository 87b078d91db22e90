//! The KVM VM: `/dev/kvm`, the VM file descriptor, required capabilities, the in-kernel
//! irqchip (PIC + IOAPIC + LAPICs) and PIT, the TSS and identity-map pages, and guest RAM
//! registered as memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use arch::x86_64::layout::{KVM_IDENTITY_MAP, KVM_TSS};

use crate::memory::GuestMemoryMmap;

/// Errors creating or setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("Cannot open /dev/kvm (is KVM enabled and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A capability Ember needs is missing.
    #[error("The host's KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// `KVM_CREATE_VM` failed.
    #[error("Failed to create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Setting the TSS or identity-map address failed.
    #[error("Failed to set the TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    /// Creating the in-kernel irqchip failed.
    #[error("Failed to create the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// Creating the PIT failed.
    #[error("Failed to create the PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// Registering guest memory failed.
    #[error("Failed to register guest memory slot {slot}")]
    MemorySlot {
        /// The slot.
        slot: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Reading the supported CPUID failed.
    #[error("Failed to read the host's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// The KVM system handle and one VM.
pub struct KvmVm {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
}

const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Ioeventfd, "IOEVENTFD"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::Pit2, "PIT2"),
    (Cap::PitState2, "PIT_STATE2"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "EXT_CPUID"),
];

impl KvmVm {
    /// Opens `/dev/kvm`, checks capabilities and creates a VM with `mem` as its RAM, then the
    /// irqchip and PIT.
    ///
    /// The order matters for start-up time: once an in-kernel irqchip exists, every memory-slot
    /// change waits for an SRCU grace period (about 5 ms measured on kvm-pvm hosts, whatever the
    /// slot's size), so the slots go in first, while the VM has no irqchip yet.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP)
            .map_err(VmError::Tss)?;
        fd.set_tss_address(KVM_TSS as usize).map_err(VmError::Tss)?;
        register_memory(&fd, mem)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Self { kvm, fd })
    }
}

/// Registers every region of `mem` as a KVM memory slot.
fn register_memory(fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::MemorySlot {
                slot,
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` points at `region.len()` bytes mapped by `mem`, which the VM
        // (and with it this slot) never outlives: both are owned by the VM's runner and
        // the memory is dropped after the VM fd.
        unsafe { fd.set_user_memory_region(r) }
            .map_err(|source| VmError::MemorySlot { slot, source })?;
    }
    Ok(())
}
