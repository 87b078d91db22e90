//! Ember's emulated devices and the bus that routes guest accesses to them.
//!
//! Devices never touch KVM: they see offsets from their base address, raise interrupts through
//! an [`EventFdTrigger`] (an eventfd the `vmm` crate registers as an irqfd) and report guest
//! requests to stop the VM through a [`GuestExit`] sink.
#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
pub mod virtio;

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// A request from the guest to end the VM, raised by a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest reset the machine (i8042 `0xFE`).
    Reset,
    /// The guest powered the machine off.
    PowerOff,
    /// The guest wrote an exit status to the exit port.
    Status(u8),
}

/// Where devices report [`GuestExit`] requests. The `vmm` crate implements it.
pub trait ExitSink: Send + Sync {
    /// The guest asked to end the VM.
    fn guest_exit(&self, exit: GuestExit);
}

/// Shared handle to an [`ExitSink`].
pub type SharedExitSink = Arc<dyn ExitSink>;

/// An interrupt line backed by an eventfd (registered as a KVM irqfd by the `vmm` crate).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
