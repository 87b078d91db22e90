//! The host side of virtio-vsock, as Firecracker's: guest streams mapped to Unix streams.
//!
//! - Host-initiated: a host process connects to the device's socket and writes
//!   `CONNECT <port>\n`; Ember sends the guest a REQUEST for `port` from a fresh host port and,
//!   once the guest answers RESPONSE, writes `OK <host port>\n` back; the stream then carries
//!   the bytes. A refusal (RST) or no answer within [`REQUEST_TIMEOUT`] closes the host stream.
//! - Guest-initiated: a REQUEST to host port `P` connects to `<socket>_P` (nothing else can
//!   be reached); a refused or missing listener answers RST.
//!
//! Flow control follows virtio 1.2 §5.10.6.3: host data goes to the guest only within its
//! credit, and guest data beyond Ember's announced buffer resets the connection, so what
//! Ember holds per connection is bounded by [`CONN_BUF`]; a peer that stops reading stalls
//! its own stream only. Shutdown and reset follow §5.10.6.5: a half-close passes on as a
//! half-close; a guest's full SHUTDOWN is answered with RST once buffered data reached the
//! host (or [`CLOSE_TIMEOUT`] passed).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use log::debug;

use super::connection::{owe, recv_nowait, send_nosignal, Conn, State, CONN_BUF};
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};

/// How long the guest has to answer a host's connection request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection waits for the guest's RST or for its data to drain.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host process has to send its `CONNECT` line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections (and host streams still sending their `CONNECT` line) at once.
pub const MAX_CONNS: usize = 1024;
/// Longest `CONNECT` line.
const LINE_MAX: usize = 64;
/// Resets owed to the guest for packets of no connection, at most (more are dropped: the
/// guest's own timeouts end those).
const MAX_RSTS: usize = 1024;
/// First host port given to host-initiated connections (as Firecracker's).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Largest data packet to the guest, and the copy buffer's size.
const CHUNK: usize = 64 * 1024;

/// (host port, guest port).
pub type Key = (u32, u32);

/// A host stream that has not sent its `CONNECT` line yet.
struct PendingHost {
    stream: UnixStream,
    line: [u8; LINE_MAX],
    len: usize,
    deadline: Instant,
}

/// A change of what epoll watches on a host stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Start, change or stop (`new` empty) watching `fd`.
    Set {
        /// The stream.
        fd: RawFd,
        /// What was watched (empty: not registered).
        old: EventSet,
        /// What to watch (empty: unregister).
        new: EventSet,
    },
}

/// The connections of one vsock device.
pub struct Muxer {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, PendingHost>,
    rxq: VecDeque<Key>,
    rsts: VecDeque<Key>,
    next_port: u32,
    watches: Vec<Watch>,
    /// Streams to close once epoll forgot them (closing first would leave a stale entry).
    dead: Vec<UnixStream>,
    scratch: Vec<u8>,
}

impl Muxer {
    /// Serves guest `cid` with `listener` (non-blocking, bound at `socket`).
    pub fn new(cid: u64, socket: PathBuf, listener: UnixListener) -> Self {
        Self {
            cid,
            socket,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            rsts: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            watches: Vec::new(),
            dead: Vec::new(),
            scratch: vec![0; CHUNK],
        }
    }

    /// The listening socket's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The socket path host processes connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Takes the epoll changes and the streams to close after them.
    pub fn take_changes(&mut self) -> (Vec<Watch>, Vec<UnixStream>) {
        (
            std::mem::take(&mut self.watches),
            std::mem::take(&mut self.dead),
        )
    }

    /// Whether a packet waits for a receive buffer.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Whether anything waits for a deadline.
    pub fn has_deadlines(&self) -> bool {
        !self.pending.is_empty()
            || self
                .conns
                .values()
                .any(|c| !matches!(c.state, State::Established))
    }

    /// Accepts host streams (they then send their `CONNECT` line).
    pub fn accept(&mut self) {
        loop {
            // accept4 with SOCK_NONBLOCK: std's set_nonblocking would take an ioctl the event
            // loop's seccomp list does not have.
            // SAFETY: the listener's own descriptor; no address is asked for.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            let accepted = if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: a new descriptor owned by nothing else.
                Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
            };
            match accepted {
                Ok(stream) => {
                    if self.conns.len() + self.pending.len() >= MAX_CONNS {
                        debug!("vsock: too many connections; host stream closed");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.watches.push(Watch::Set {
                        fd,
                        old: EventSet::empty(),
                        new: EventSet::IN,
                    });
                    self.pending.insert(
                        fd,
                        PendingHost {
                            stream,
                            line: [0; LINE_MAX],
                            len: 0,
                            deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("vsock: accept: {e}");
                    break;
                }
            }
        }
    }

    /// A host stream became ready (`set` from epoll).
    pub fn host_event(&mut self, fd: RawFd, set: EventSet) {
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::OUT) {
            if let Err(e) = c.flush_to_host() {
                debug!("vsock: host stream {key:?}: {e}");
                self.kill(key, true);
                return;
            }
            c.note_forwarded();
            if c.after_drain() {
                self.kill(key, true); // the answer to the guest's full shutdown
                return;
            }
        }
        if set.intersects(EventSet::IN) {
            c.want_rw = true;
        }
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            c.host_hup = true;
            if c.can_send_data() {
                c.want_rw = true; // what the host sent before it went goes first
            } else {
                self.kill(key, true);
                return;
            }
        }
        self.touch(key);
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let n = match recv_nowait(&p.stream, &mut p.line[p.len..]) {
            Ok(0) => return self.drop_pending(fd, "closed before CONNECT"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(_) => return self.drop_pending(fd, "read error"),
        };
        p.len += n;
        let Some(nl) = p.line[..p.len].iter().position(|&b| b == b'\n') else {
            if p.len == LINE_MAX {
                self.drop_pending(fd, "no CONNECT line");
            }
            return;
        };
        let Some(port) = parse_connect(&p.line[..nl]) else {
            return self.drop_pending(fd, "bad CONNECT line");
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let prefix = p.line[nl + 1..p.len].to_vec();
        let Some(local) = self.free_local_port(port) else {
            self.watches.push(Watch::Set {
                fd,
                old: EventSet::IN,
                new: EventSet::empty(),
            });
            self.dead.push(p.stream);
            return;
        };
        let mut c = Conn::new(
            p.stream,
            local,
            port,
            State::Connecting(Instant::now() + REQUEST_TIMEOUT),
        );
        c.prefix = prefix;
        c.owed = owe::REQUEST;
        c.peer_buf_alloc = 0;
        c.watched = EventSet::IN;
        self.by_fd.insert(fd, (local, port));
        self.conns.insert((local, port), c);
        self.touch((local, port));
    }

    fn drop_pending(&mut self, fd: RawFd, why: &str) {
        debug!("vsock: host stream dropped: {why}");
        if let Some(p) = self.pending.remove(&fd) {
            self.watches.push(Watch::Set {
                fd,
                old: EventSet::IN,
                new: EventSet::empty(),
            });
            self.dead.push(p.stream);
        }
    }

    fn free_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..MAX_CONNS + 1 {
            let p = self.next_port;
            self.next_port = if p == u32::MAX {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    /// Handles one packet from the guest's transmit queue; `data` holds what follows the
    /// header.
    pub fn guest_packet(&mut self, h: &Header, data: &mut impl Read) {
        if h.src_cid != self.cid {
            debug!("vsock: packet from CID {} dropped", h.src_cid);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.owe_rst(key);
            }
            return;
        }
        if !self.conns.contains_key(&key) {
            match h.op {
                op::REQUEST => self.guest_connect(key, h),
                op::RST => {}
                _ => self.owe_rst(key),
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.peer_credit_from(h.buf_alloc, h.fwd_cnt);
        match (c.state, h.op) {
            (_, op::RST) => return self.kill(key, false),
            (State::Connecting(_), op::RESPONSE) => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                if !matches!(send_nosignal(&c.stream, line.as_bytes()), Ok(n) if n == line.len()) {
                    return self.kill(key, true);
                }
            }
            (State::Connecting(_), _) => return self.kill(key, true),
            (_, op::RW) => {
                let len = h.len as usize;
                if c.peer_shutdown & SHUTDOWN_SEND != 0 || c.tx_buf.len() + len > CONN_BUF as usize
                {
                    debug!("vsock: {key:?}: data beyond the guest's credit or after its shutdown");
                    return self.kill(key, true);
                }
                let mut left = len;
                while left > 0 {
                    let n = left.min(self.scratch.len());
                    if data.read_exact(&mut self.scratch[..n]).is_err() {
                        debug!("vsock: {key:?}: packet shorter than its header says");
                        return self.kill(key, true);
                    }
                    if let Err(e) = c.send_to_host(&self.scratch[..n]) {
                        debug!("vsock: host stream {key:?}: {e}");
                        return self.kill(key, true);
                    }
                    left -= n;
                }
                c.note_forwarded();
            }
            (_, op::CREDIT_UPDATE) => {}
            (_, op::CREDIT_REQUEST) => c.owed |= owe::CREDIT_UPDATE,
            (_, op::SHUTDOWN) => {
                c.peer_shutdown |= h.flags & SHUTDOWN_BOTH;
                if c.after_drain() {
                    return self.kill(key, true);
                }
                if c.peer_shutdown == SHUTDOWN_BOTH {
                    c.state = State::Closing(Instant::now() + CLOSE_TIMEOUT);
                }
            }
            _ => return self.kill(key, true),
        }
        self.touch(key);
    }

    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.len() + self.pending.len() >= MAX_CONNS {
            return self.owe_rst(key);
        }
        let path = format!("{}_{}", self.socket.display(), key.0);
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connection to {path}: {e}");
                return self.owe_rst(key);
            }
        };
        let mut c = Conn::new(stream, key.0, key.1, State::Established);
        c.peer_credit_from(h.buf_alloc, h.fwd_cnt);
        c.owed = owe::RESPONSE;
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
        self.touch(key);
    }

    fn owe_rst(&mut self, key: Key) {
        if self.rsts.len() < MAX_RSTS {
            self.rsts.push_back(key);
        }
    }

    /// Ends a connection: its host stream is closed, the guest gets RST if `rst`.
    fn kill(&mut self, key: Key, rst: bool) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        if c.queued {
            self.rxq.retain(|k| *k != key);
        }
        let fd = c.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        if !c.watched.is_empty() {
            self.watches.push(Watch::Set {
                fd,
                old: c.watched,
                new: EventSet::empty(),
            });
        }
        self.dead.push(c.stream);
        if rst {
            self.owe_rst(key);
        }
    }

    /// After a connection changed: queues it for the guest and updates what epoll watches.
    fn touch(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.has_rx() && !c.queued {
            c.queued = true;
            self.rxq.push_back(key);
        }
        let want = c.wanted_events();
        if want != c.watched {
            self.watches.push(Watch::Set {
                fd: c.stream.as_raw_fd(),
                old: c.watched,
                new: want,
            });
            c.watched = want;
        }
    }

    /// Writes the next packet for the guest into `w` (a receive buffer); returns the bytes
    /// written, or `None` when nothing waits.
    pub fn next_rx(&mut self, w: &mut impl WriteAvail) -> Option<u32> {
        if w.available() < HDR_LEN {
            return Some(0); // a buffer too small for any packet: given back empty
        }
        if let Some((local, peer)) = self.rsts.pop_front() {
            let h = self.header(local, peer, op::RST, 0);
            return w.write_all(&h.to_bytes()).ok().map(|_| HDR_LEN as u32);
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            if let Some(n) = self.packet_for(key, w) {
                self.touch(key);
                return Some(n);
            }
            self.touch(key);
        }
        None
    }

    fn header(&self, local: u32, peer: u32, op: u16, fwd_cnt: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local,
            dst_port: peer,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF,
            fwd_cnt,
        }
    }

    /// One packet of connection `key`, if it has one.
    fn packet_for(&mut self, key: Key, w: &mut impl WriteAvail) -> Option<u32> {
        loop {
            let c = self.conns.get_mut(&key)?;
            let mut h = Header {
                src_cid: HOST_CID,
                dst_cid: self.cid,
                src_port: c.local_port,
                dst_port: c.peer_port,
                len: 0,
                type_: TYPE_STREAM,
                op: 0,
                flags: 0,
                buf_alloc: CONN_BUF,
                fwd_cnt: c.fwd_cnt.0,
            };
            let control = [
                (owe::REQUEST, op::REQUEST),
                (owe::RESPONSE, op::RESPONSE),
                (owe::SHUTDOWN, op::SHUTDOWN),
                (owe::CREDIT_UPDATE, op::CREDIT_UPDATE),
            ];
            if let Some(&(bit, o)) = control.iter().find(|(bit, _)| c.owed & bit != 0) {
                c.owed &= !bit;
                h.op = o;
                if o == op::SHUTDOWN {
                    h.flags = c.shutdown_flags;
                }
                c.fwd_cnt_sent = c.fwd_cnt;
                c.owed &= !owe::CREDIT_UPDATE;
                return w.write_all(&h.to_bytes()).ok().map(|_| HDR_LEN as u32);
            }
            if !(c.can_send_data() && (c.want_rw || !c.prefix.is_empty())) {
                return None;
            }
            let room = (w.available() - HDR_LEN)
                .min(c.peer_free() as usize)
                .min(self.scratch.len());
            if room == 0 {
                return None; // no credit: the guest's next credit update brings the stream back
            }
            let n = if !c.prefix.is_empty() {
                let n = room.min(c.prefix.len());
                self.scratch[..n].copy_from_slice(&c.prefix[..n]);
                c.prefix.drain(..n);
                n
            } else {
                match recv_nowait(&c.stream, &mut self.scratch[..room]) {
                    Ok(0) => {
                        c.want_rw = false;
                        c.host_eof = true;
                        if c.host_hup {
                            c.owe_shutdown(SHUTDOWN_BOTH);
                            c.state = State::Closing(Instant::now() + CLOSE_TIMEOUT);
                        } else {
                            c.owe_shutdown(SHUTDOWN_SEND);
                        }
                        continue; // the SHUTDOWN goes now
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        c.want_rw = false;
                        return None;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("vsock: host stream {key:?}: {e}");
                        self.kill(key, true);
                        return None;
                    }
                }
            };
            h.op = op::RW;
            h.len = n as u32;
            c.rx_cnt += std::num::Wrapping(n as u32);
            c.fwd_cnt_sent = c.fwd_cnt;
            c.owed &= !owe::CREDIT_UPDATE;
            return (w.write_all(&h.to_bytes()).is_ok() && w.write_all(&self.scratch[..n]).is_ok())
                .then_some((HDR_LEN + n) as u32);
        }
    }

    /// Ends what passed its deadline.
    pub fn tick(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            self.drop_pending(fd, "no CONNECT line in time");
        }
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, State::Connecting(d) | State::Closing(d) if d <= now),
            )
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            debug!("vsock: {key:?} timed out");
            self.kill(key, true);
        }
    }

    /// Forgets every connection (device reset, transport reset): host streams are closed.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.kill(key, false);
        }
        self.rsts.clear();
        self.rxq.clear();
    }

    /// Marks the guest's receive side shut for tests of credit exhaustion.
    #[cfg(test)]
    pub fn conn(&self, key: Key) -> Option<&Conn> {
        self.conns.get(&key)
    }
}

/// A receive buffer: how much room is left, and writes.
pub trait WriteAvail: Write {
    /// Bytes that can still be written.
    fn available(&self) -> usize;
}

impl<B: vm_memory::bitmap::BitmapSlice> WriteAvail for virtio_queue::Writer<'_, B> {
    fn available(&self) -> usize {
        self.available_bytes()
    }
}

/// Parses `CONNECT <port>` (the command in any case, as Firecracker accepts it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let (cmd, port) = s.split_once(' ')?;
    if !cmd.eq_ignore_ascii_case("connect") {
        return None;
    }
    port.trim().parse().ok()
}

/// Connects to the Unix socket `path` without blocking: a listener whose backlog is full
/// refuses (`EAGAIN`) rather than stalling the event loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the length given.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_as_firecracker_reads_them() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 1234\r"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"HELLO 52"), None);
        assert_eq!(parse_connect(&[0xff, b' ', b'1']), None);
    }
}
