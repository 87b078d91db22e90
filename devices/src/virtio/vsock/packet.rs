//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and the constants of the stream
//! protocol.
//!
//! Packets are read and written through virtio-queue's `Reader` and `Writer`, not through the
//! `virtio-vsock` crate's `VsockPacket`: that one needs the header in one descriptor and the
//! data in at most one more, inside one memory region, while the spec lets a driver split a
//! packet anywhere (a header over two descriptors, data over many, indirect tables). Parsing
//! the 44 header bytes by hand is the whole cost of handling every layout.

/// The host's context ID: what a guest connects to.
pub const HOST_CID: u64 = 2;
/// Header size in bytes.
pub const HDR_LEN: usize = 44;
/// `type`: stream socket (the only one supported).
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refusal, abort, or the answer to a full shutdown).
    pub const RST: u16 = 3;
    /// Half or full close: `flags` holds [`super::SHUTDOWN_RCV`] and [`super::SHUTDOWN_SEND`].
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's buffer space, unsolicited.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags: the sender closed its socket.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Event queue: the device's transport was reset (connections are gone), e.g. after a
/// snapshot was restored.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// A packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Data length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed of what it received.
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses the little-endian wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| {
            u64::from_le_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ])
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_in_the_spec_layout() {
        let h = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 4096,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 262_144,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &52u32.to_le_bytes(), "dst_port at 20");
        assert_eq!(&b[28..30], &1u16.to_le_bytes(), "type at 28");
        assert_eq!(&b[30..32], &5u16.to_le_bytes(), "op at 30");
        assert_eq!(&b[40..44], &0xdead_beefu32.to_le_bytes(), "fwd_cnt last");
        assert_eq!(Header::from_bytes(&b), h);
    }
}
