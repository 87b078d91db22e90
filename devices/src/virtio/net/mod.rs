//! virtio-net (virtio 1.2 §5.1) on a host TAP: one receive and one transmit queue, a MAC
//! address and link status in configuration space. Frames cross with the virtio-net header,
//! which the TAP (`IFF_VNET_HDR`) reads and writes itself; `num_buffers` in a received header
//! is written here. Receive: the TAP is watched only while the guest has posted buffers, and
//! a frame that does not fit the buffer it gets is dropped and counted, never cut. Transmit:
//! a frame the TAP refuses with `EAGAIN` waits and is sent when the TAP is writable again.
//! Offered: checksum and TCP segmentation offloads both ways (the TAP takes the guest's
//! virtio-net header as is; the receive offloads the guest accepts are set with
//! `TUNSETOFFLOAD`), mergeable receive buffers, EVENT_IDX and indirect descriptors. Not
//! supported: multiqueue and the control queue.

mod device;
mod handler;
pub mod tap;

pub use device::{NetState, RxOutcome, TxOutcome, VirtioNet, FRAME_MAX};
pub use handler::NetHandler;
pub use tap::{Tap, TapError};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
