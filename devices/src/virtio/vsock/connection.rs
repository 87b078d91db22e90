//! One vsock stream between a guest port and a host Unix stream: its state, credit-based flow
//! control (virtio 1.2 §5.10.6.3) and the control packets it owes the guest.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::{SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Bytes of guest data Ember holds per connection for a host that reads slower than the
/// guest writes: the receive buffer it announces (`buf_alloc`), as Firecracker's.
pub const CONN_BUF: u32 = 256 * 1024;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST owed or sent, waiting for the guest's RESPONSE until the
    /// deadline.
    Connecting(Instant),
    /// Both ends may exchange data.
    Established,
    /// Closing: waiting for the guest's RST (after Ember's full SHUTDOWN) or for buffered
    /// data to reach the host (before Ember's RST), until the deadline.
    Closing(Instant),
}

/// Control packets owed to the guest, as bits.
pub mod owe {
    /// REQUEST (host-initiated connection).
    pub const REQUEST: u8 = 1;
    /// RESPONSE (guest-initiated connection accepted).
    pub const RESPONSE: u8 = 2;
    /// SHUTDOWN with [`super::Conn::shutdown_flags`].
    pub const SHUTDOWN: u8 = 4;
    /// CREDIT_UPDATE.
    pub const CREDIT_UPDATE: u8 = 8;
    /// CREDIT_REQUEST.
    pub const CREDIT_REQUEST: u8 = 16;
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The host side.
    pub stream: UnixStream,
    /// The host side's vsock port.
    pub local_port: u32,
    /// The guest side's vsock port.
    pub peer_port: u32,
    /// Where the connection is.
    pub state: State,
    /// Control packets owed to the guest ([`owe`] bits).
    pub owed: u8,
    /// The flags of the SHUTDOWN owed.
    pub shutdown_flags: u32,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host will send no more (its stream read 0).
    pub host_eof: bool,
    /// The host stream hung up both ways.
    pub host_hup: bool,
    /// Host data may wait to be read (the stream was readable).
    pub want_rw: bool,
    /// In the muxer's queue of connections with something for the guest.
    pub queued: bool,
    /// What epoll watches on the stream (empty: not registered).
    pub watched: EventSet,
    /// Bytes read from the host with its `CONNECT` line, sent before anything else.
    pub prefix: Vec<u8>,
    /// Guest data the host stream has not taken yet (at most [`CONN_BUF`]).
    pub tx_buf: VecDeque<u8>,
    /// Bytes of guest data passed to the host.
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// Bytes of host data sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    /// The guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed of what it received.
    pub peer_fwd_cnt: Wrapping<u32>,
}

impl Conn {
    /// A connection on `stream` between host port `local_port` and guest port `peer_port`.
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            owed: 0,
            shutdown_flags: 0,
            peer_shutdown: 0,
            host_eof: false,
            host_hup: false,
            want_rw: false,
            queued: false,
            watched: EventSet::empty(),
            prefix: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// Takes the guest's view of its buffer from any packet's header.
    pub fn peer_credit_from(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection has something for the guest.
    pub fn has_rx(&self) -> bool {
        self.owed != 0
            || ((self.want_rw || !self.prefix.is_empty())
                && self.can_send_data()
                && self.peer_free() > 0)
    }

    /// Whether host data may go to the guest (established, neither side closed that way).
    pub fn can_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// What epoll should watch: input while host data can go to the guest and none is
    /// pending, output while guest data waits for the host.
    pub fn wanted_events(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.host_hup {
            return e; // a hung-up stream would report HUP for ever
        }
        if self.can_send_data() && !self.want_rw && self.prefix.is_empty() && self.peer_free() > 0 {
            e |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Owes the guest a SHUTDOWN with `flags` (added to any owed already).
    pub fn owe_shutdown(&mut self, flags: u32) {
        self.shutdown_flags |= flags;
        self.owed |= owe::SHUTDOWN;
    }

    /// Writes guest data to the host: straight to the stream while nothing waits, the rest
    /// into the connection's buffer. `Err` means the host is gone (the connection must be
    /// reset). Counts what the host took in `fwd_cnt`.
    pub fn send_to_host(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut off = 0;
        if self.tx_buf.is_empty() {
            while off < data.len() {
                match send_nosignal(&self.stream, &data[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.fwd_cnt += Wrapping(off as u32);
        }
        self.tx_buf.extend(&data[off..]);
        Ok(())
    }

    /// Moves buffered guest data to the host stream as far as it takes it.
    pub fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, a) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tx_buf.is_empty() {
            // Release a buffer a slow reader made grow.
            self.tx_buf.shrink_to(0);
        }
        Ok(())
    }

    /// After guest data moved on: a credit update is owed once the guest's view of the free
    /// space lags by half the buffer (a guest that waits for credit hears of it in time).
    pub fn note_forwarded(&mut self) {
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CONN_BUF / 2 {
            self.owed |= owe::CREDIT_UPDATE;
        }
    }

    /// After buffered data drained: closes the host's write side once the guest said it
    /// sends no more. Returns whether the connection has nothing left to do but to be reset
    /// (closing, nothing buffered).
    pub fn after_drain(&mut self) -> bool {
        if !self.tx_buf.is_empty() {
            return false;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        self.peer_shutdown == SHUTDOWN_BOTH
    }
}

/// `send` with `MSG_NOSIGNAL`: a host that went away gives `EPIPE`, not a SIGPIPE that would
/// kill the VMM; `MSG_DONTWAIT`: never blocks the event loop.
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is the stream's own.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `recv` with `MSG_DONTWAIT`.
pub fn recv_nowait(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the descriptor is the stream's.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
