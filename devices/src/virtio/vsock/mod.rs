//! virtio-vsock (virtio 1.2 §5.10) with its host side in user space, as Firecracker's: guest
//! `AF_VSOCK` streams become Unix-socket streams on the host ([`muxer`] says how). Three
//! queues (receive, transmit, event), the guest's CID in configuration space, stream sockets
//! only; served on the VM's event loop like the other devices.

pub mod connection;
mod device;
mod handler;
pub mod muxer;
pub mod packet;

pub use device::{VirtioVsock, VsockState, QUEUE_SIZE};
pub use handler::VsockHandler;
pub use muxer::Muxer;
