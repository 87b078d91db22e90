//! Virtio devices (virtio 1.2, <https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>)
//! over the MMIO transport (§4.2). Split virtqueues come from rust-vmm's `virtio-queue`;
//! notifications arrive through an ioeventfd and interrupts leave through an irqfd, so no
//! request passes through a vCPU thread.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as virtio devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// `InterruptStatus` bit: a used buffer was added to a queue (§4.2.2).
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit: the configuration changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// The interrupt line of one virtio-mmio device and its `InterruptStatus` register, shared by
/// the transport (guest reads and acknowledges) and the device (raises).
#[derive(Clone, Debug)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    irq: Arc<EventFd>,
}

impl VirtioInterrupt {
    /// An interrupt raised through `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
        }
    }

    /// Sets `bits` in `InterruptStatus` and raises the line.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// The current `InterruptStatus`.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears `bits` (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets `InterruptStatus` as saved and, if anything is pending, raises the line again
    /// (a restored guest must not miss an interrupt it had not yet taken).
    pub fn restore_status(&self, status: u32) -> std::io::Result<()> {
        self.status.store(status, Ordering::SeqCst);
        if status != 0 {
            self.irq.write(1)?;
        }
        Ok(())
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// virtio-queue's `QueueState`, mirrored for serde (it has none).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(remote = "virtio_queue::QueueState")]
pub struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// A queue's state as plain data (serde through [`QueueStateDef`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot(#[serde(with = "QueueStateDef")] pub virtio_queue::QueueState);

/// A virtio device's own state (what its transport does not hold) as plain data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-blk.
    Block(block::BlockState),
    /// virtio-net.
    Net(net::NetState),
    /// virtio-vsock.
    Vsock(vsock::VsockState),
}

/// Reads `data.len()` bytes of a device's configuration space `config` at `offset`; bytes
/// past its end read as zero (a guest may read anywhere in the window).
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver did not set up the queues the device needs.
    #[error("Queue {0} is not ready or not valid")]
    BadQueue(usize),
    /// A saved state does not fit this device.
    #[error("The saved state does not fit this device: {0}")]
    BadState(&'static str),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (§5).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads from the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space (ignored by devices without writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the negotiated `features` and the driver's `queues`.
    fn activate(
        &mut self,
        features: u64,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;
    /// Stops the device and forgets its queues (device reset, §2.4).
    fn reset(&mut self);
    /// Whether the device stopped itself (a queue the driver broke) and waits for a reset;
    /// the transport then shows DEVICE_NEEDS_RESET in the device status.
    fn needs_reset(&self) -> bool {
        false
    }
    /// The device's own state, as plain data (for snapshots; the VM is paused).
    fn state(&self) -> VirtioDeviceState;
    /// Takes `state` back on a freshly made device of the same kind: an active device gets its
    /// queues and `interrupt` again. Fails on a state of another kind or a queue that does
    /// not hold.
    fn restore(
        &mut self,
        state: &VirtioDeviceState,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;
}
