//! The KVM VM: `/dev/kvm`, the VM file descriptor, required capabilities, the split irqchip
//! (local APICs in the kernel; the I/O APIC is `devices::legacy::Ioapic`, whose routes
//! [`GsiRouter`] installs), the TSS and identity-map pages, and guest RAM registered as memory
//! slots. There is no PIC and no PIT: guests get their timer from the local APIC (TSC
//! deadline, see `arch::x86_64::cpuid`).

use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use arch::x86_64::layout::{KVM_IDENTITY_MAP, KVM_TSS};
use devices::legacy::{MsiRouter, PinRoutes, IOAPIC_PINS};

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
    /// Enabling the split irqchip (in-kernel local APICs) failed.
    #[error("Failed to create the in-kernel local APICs (split irqchip)")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// Registering guest memory failed.
    #[error("Failed to register guest memory slot {slot}")]
    MemorySlot {
        /// The slot.
        slot: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The GSI routing table could not be allocated.
    #[error("Cannot allocate the interrupt routing table")]
    Routing,
}

/// The KVM system handle and one VM.
pub struct KvmVm {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM, shared with the I/O APIC's [`GsiRouter`].
    pub fd: Arc<VmFd>,
}

const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::SplitIrqchip, "SPLIT_IRQCHIP"),
    (Cap::IrqRouting, "IRQ_ROUTING"),
    (Cap::TscDeadlineTimer, "TSC_DEADLINE_TIMER"),
    (Cap::Ioeventfd, "IOEVENTFD"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "EXT_CPUID"),
];

impl KvmVm {
    /// Opens `/dev/kvm`, checks capabilities and creates a VM with `mem` as its RAM and the
    /// split irqchip.
    ///
    /// Why split: with KVM's full in-kernel irqchip (PIC, I/O APIC) and PIT, every memory-slot
    /// change after their creation waited about 5 ms, and destroying the VM 15-23 ms, for SRCU
    /// grace periods on the hosts Ember was measured on; with the split irqchip both take well
    /// under a millisecond. The slots still go in first.
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
        let mut split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = IOAPIC_PINS as u64;
        fd.enable_cap(&split).map_err(VmError::Irqchip)?;
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
        })
    }
}

/// Installs the I/O APIC's pin routes as the VM's GSI routing table: GSI = pin, one MSI route
/// per unmasked pin (irqfds on a masked pin's GSI then deliver nothing).
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: KvmIrqRouting,
}

impl GsiRouter {
    /// A router for `vm`, with its table allocated once, for every pin.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, VmError> {
        let mut table = KvmIrqRouting::new(IOAPIC_PINS).map_err(|_| VmError::Routing)?;
        table.retain(|_| false);
        Ok(Self { vm, table })
    }
}

impl MsiRouter for GsiRouter {
    fn set_routes(&mut self, routes: &PinRoutes) -> std::io::Result<()> {
        self.table.retain(|_| false);
        for (gsi, msi) in routes.iter().enumerate() {
            let Some(msi) = msi else { continue };
            let mut e = kvm_irq_routing_entry {
                gsi: gsi as u32,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msi.address as u32;
            e.u.msi.address_hi = (msi.address >> 32) as u32;
            e.u.msi.data = msi.data;
            self.table
                .push(e)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
        }
        self.vm
            .set_gsi_routing(&self.table)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
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
