//! virtio-blk (virtio 1.2 §5.2): a disk image file as a block device. Requests IN, OUT, FLUSH
//! (fdatasync) and GET_ID; features VERSION_1, FLUSH, RO, SEG_MAX, INDIRECT_DESC and
//! EVENT_IDX. Capacity is the image size in 512-byte sectors. Unknown requests get UNSUPP,
//! malformed ones IOERR. Not supported: discard, write-zeroes, multiple queues, topology.

mod device;
mod disk;
mod handler;
pub mod request;

pub use device::{BlockState, VirtioBlock};
pub use disk::{Disk, DiskError};
pub use handler::BlockHandler;

/// Size of a virtio-blk sector in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
