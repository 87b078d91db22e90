//! The virtio-vsock device model (virtio 1.2 §5.10): the guest's CID in configuration space,
//! the receive, transmit and event queues, and the [`Muxer`] behind them.

use std::io::Read;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::muxer::Muxer;
use super::packet::{Header, EVENT_TRANSPORT_RESET, HDR_LEN};
use crate::virtio::{
    ActivateError, GuestMemoryMmap, QueueSnapshot, VirtioDevice, VirtioDeviceState,
    VirtioInterrupt, INT_VRING,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVT: usize = 2;
/// Packets moved per event before the event loop serves others.
const BATCH: usize = 256;

/// A virtio-vsock device's state as plain data. Connections are not kept: a restored guest
/// gets a transport-reset event and forgets its connections (listening sockets stay).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockState {
    /// The guest's context ID.
    pub cid: u64,
    /// Receive, transmit and event queues while active.
    pub queues: Option<[QueueSnapshot; 3]>,
}

struct Active {
    queues: [Queue; 3],
    interrupt: VirtioInterrupt,
}

/// A virtio-vsock device.
pub struct VirtioVsock {
    cid: u64,
    config: [u8; 8],
    mem: GuestMemoryMmap,
    active: Option<Active>,
    muxer: Muxer,
    /// A transport-reset event waits for an event buffer.
    reset_event: bool,
}

impl VirtioVsock {
    /// A device for guest `cid` whose host side is `muxer`.
    pub fn new(cid: u64, muxer: Muxer, mem: GuestMemoryMmap) -> Self {
        Self {
            cid,
            config: cid.to_le_bytes(),
            mem,
            active: None,
            muxer,
            reset_event: false,
        }
    }

    /// The connections' side, for the event loop.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    fn notify(&mut self, queue: usize) {
        if let Some(a) = self.active.as_mut() {
            if a.queues[queue]
                .needs_notification(&self.mem)
                .unwrap_or(true)
            {
                let _ = a.interrupt.trigger(INT_VRING);
            }
        }
    }

    /// Hands the guest's transmit packets to the muxer. Returns whether packets remain.
    pub fn process_tx(&mut self) -> bool {
        let mut used = false;
        let mut more = true;
        for _ in 0..BATCH {
            let Some(a) = self.active.as_mut() else {
                more = false;
                break;
            };
            let Some(chain) = a.queues[TX].pop_descriptor_chain(&self.mem) else {
                more = false;
                break;
            };
            let head = chain.head_index();
            match chain.reader(&self.mem) {
                Ok(mut r) => {
                    let mut hdr = [0u8; HDR_LEN];
                    if r.read_exact(&mut hdr).is_ok() {
                        self.muxer.guest_packet(&Header::from_bytes(&hdr), &mut r);
                    } else {
                        log::debug!("vsock: transmit chain {head} shorter than a header");
                    }
                }
                Err(e) => log::debug!("vsock: transmit chain {head}: {e}"),
            }
            if let Some(a) = self.active.as_mut() {
                let _ = a.queues[TX].add_used(&self.mem, head, 0);
            }
            used = true;
        }
        if used {
            self.notify(TX);
        }
        more
    }

    /// Fills the guest's receive buffers with what the muxer has for it. Returns whether the
    /// guest ran out of buffers with packets still waiting.
    pub fn process_rx(&mut self) -> bool {
        let mut used = false;
        let mut starved = false;
        for _ in 0..BATCH {
            if !self.muxer.has_rx() {
                break;
            }
            let Some(a) = self.active.as_mut() else {
                break;
            };
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&self.mem) else {
                starved = true;
                break;
            };
            let head = chain.head_index();
            let len = match chain.writer(&self.mem) {
                Ok(mut w) => match self.muxer.next_rx(&mut w) {
                    Some(n) => n,
                    None => {
                        // Nothing after all (a stream had no data): the buffer stays the guest's.
                        a.queues[RX].go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    log::debug!("vsock: receive chain {head}: {e}");
                    0
                }
            };
            let _ = a.queues[RX].add_used(&self.mem, head, len);
            used = true;
        }
        if used {
            self.notify(RX);
        }
        starved
    }

    /// Delivers a pending transport-reset event if the guest gave an event buffer.
    pub fn process_event(&mut self) {
        if !self.reset_event {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(chain) = a.queues[EVT].pop_descriptor_chain(&self.mem) else {
            return;
        };
        let head = chain.head_index();
        let len = match chain.writer(&self.mem) {
            Ok(mut w) if w.available_bytes() >= 4 => {
                use std::io::Write;
                w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|_| 4)
                    .unwrap_or(0)
            }
            _ => 0,
        };
        let _ = a.queues[EVT].add_used(&self.mem, head, len);
        self.reset_event = false;
        self.notify(EVT);
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("vsock: ignored configuration write at {offset:#x}");
    }

    fn activate(
        &mut self,
        _features: u64,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let queues: [Queue; 3] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::BadQueue(q.len()))?;
        self.active = Some(Active { queues, interrupt });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.reset_event = false;
        self.muxer.reset();
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Vsock(VsockState {
            cid: self.cid,
            queues: self.active.as_ref().map(|a| {
                [
                    QueueSnapshot(a.queues[RX].state()),
                    QueueSnapshot(a.queues[TX].state()),
                    QueueSnapshot(a.queues[EVT].state()),
                ]
            }),
        })
    }

    fn restore(
        &mut self,
        state: &VirtioDeviceState,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let VirtioDeviceState::Vsock(s) = state else {
            return Err(ActivateError::BadState("not a vsock device's state"));
        };
        if s.cid != self.cid {
            return Err(ActivateError::BadState("another guest CID"));
        }
        self.active = match &s.queues {
            None => None,
            Some(qs) => {
                let mut out = Vec::with_capacity(3);
                for (i, q) in qs.iter().enumerate() {
                    let q = Queue::try_from(q.0).map_err(|_| ActivateError::BadQueue(i))?;
                    if !q.is_valid(&self.mem) {
                        return Err(ActivateError::BadQueue(i));
                    }
                    out.push(q);
                }
                let queues: [Queue; 3] = out.try_into().map_err(|_| ActivateError::BadQueue(0))?;
                // The guest's connections did not survive: tell it (virtio 1.2 §5.10.6.6).
                self.reset_event = true;
                Some(Active { queues, interrupt })
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::connection::CONN_BUF;
    use crate::virtio::vsock::muxer::{Watch, MAX_CONNS};
    use crate::virtio::vsock::packet::{op, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
    use event_manager::EventSet;
    use std::io::{Read, Write};
    use std::os::fd::RawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const CID: u64 = 3;

    struct Rig {
        mem: GuestMemoryMmap,
        dev: VirtioVsock,
        rx: MockSplitQueue<'static, GuestMemoryMmap>,
        tx: MockSplitQueue<'static, GuestMemoryMmap>,
        dir: std::path::PathBuf,
        /// Next free guest address for buffers.
        next: u64,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn rig(tag: &str) -> Rig {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("memory"),
        ));
        let dir =
            std::env::temp_dir().join(format!("ember-vsock-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut dev = VirtioVsock::new(CID, Muxer::new(CID, path, listener), mem.clone());
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x10000), 256);
        let evt = MockSplitQueue::create(mem, GuestAddress(0x20000), 16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        dev.activate(
            1 << VIRTIO_F_VERSION_1,
            vec![
                rx.create_queue().expect("rx"),
                tx.create_queue().expect("tx"),
                evt.create_queue().expect("evt"),
            ],
            VirtioInterrupt::new(irq),
        )
        .expect("activate");
        Rig {
            mem: mem.clone(),
            dev,
            rx,
            tx,
            dir,
            next: 0x100000,
        }
    }

    fn hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF,
            fwd_cnt: 0,
        }
    }

    impl Rig {
        fn alloc(&mut self, len: u64) -> u64 {
            if self.next + len > 0xf0_0000 {
                self.next = 0x10_0000; // buffers are used at once: reuse the space
            }
            let a = self.next;
            self.next += (len + 0xfff) & !0xfff;
            a
        }

        /// The guest sends `h` and `data`: the header split after 20 bytes, the data over two
        /// descriptors (a layout the virtio-vsock crate does not take).
        fn send(&mut self, h: Header, data: &[u8]) {
            let a = self.alloc(HDR_LEN as u64 + data.len() as u64 + 64);
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(data);
            self.mem.write_slice(&bytes, GuestAddress(a)).expect("w");
            let total = bytes.len() as u32;
            let mut cuts = vec![0u32, 20, HDR_LEN as u32];
            if !data.is_empty() {
                cuts.push(HDR_LEN as u32 + data.len() as u32 / 2);
            }
            cuts.push(total);
            cuts.dedup();
            let n = cuts.len() - 1;
            let descs: Vec<_> = (0..n)
                .map(|i| {
                    let flags = if i + 1 < n { NEXT } else { 0 };
                    d(
                        a + u64::from(cuts[i]),
                        cuts[i + 1] - cuts[i],
                        flags,
                        i as u16 + 1,
                    )
                })
                .collect();
            self.tx.add_desc_chains(&descs, 0).expect("tx chain");
            self.dev.process_tx();
        }

        /// Posts one receive buffer of `len` bytes and returns what the device wrote there.
        fn recv(&mut self, len: u32) -> Option<(Header, Vec<u8>)> {
            let before = self.rx.used().idx().load();
            let a = self.alloc(u64::from(len));
            self.rx
                .add_desc_chains(&[d(a, len, WRITE, 0)], 0)
                .expect("rx chain");
            self.dev.process_rx();
            let after = self.rx.used().idx().load();
            if after == before {
                return None;
            }
            let e = self
                .rx
                .used()
                .ring()
                .ref_at(before as usize % 256)
                .expect("used")
                .load();
            let mut b = vec![0u8; e.len() as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).expect("r");
            if b.len() < HDR_LEN {
                return Some((Header::default(), b));
            }
            let h = Header::from_bytes(b[..HDR_LEN].try_into().expect("44"));
            Some((h, b[HDR_LEN..].to_vec()))
        }

        fn host_fd(&mut self, key: (u32, u32)) -> RawFd {
            use std::os::fd::AsRawFd;
            self.dev
                .muxer()
                .conn(key)
                .expect("connection")
                .stream
                .as_raw_fd()
        }

        /// Accepts a host stream that connected to the device's socket; returns its
        /// descriptor (as epoll would report it).
        fn accept(&mut self) -> RawFd {
            self.dev.muxer().accept();
            let (watches, _) = self.dev.muxer().take_changes();
            let Some(Watch::Set { fd, .. }) = watches
                .into_iter()
                .rfind(|Watch::Set { old, .. }| old.is_empty())
            else {
                panic!("the new stream is not watched")
            };
            fd
        }

        fn socket(&mut self) -> std::path::PathBuf {
            self.dev.muxer().socket().to_path_buf()
        }
    }

    #[test]
    fn a_guest_connection_reaches_the_host_listener_and_bytes_flow_both_ways() {
        let mut r = rig("guest");
        let l = UnixListener::bind(format!("{}_6000", r.socket().display())).expect("bind");
        r.send(hdr(op::REQUEST, 1234, 6000, 0), &[]);
        let (h, _) = r.recv(4096).expect("a reply");
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (op::RESPONSE, 6000, 1234, CID)
        );
        let (mut host, _) = l.accept().expect("Ember connected");
        r.send(hdr(op::RW, 1234, 6000, 5), b"hello");
        let mut got = [0u8; 5];
        host.read_exact(&mut got).expect("data");
        assert_eq!(&got, b"hello");
        host.write_all(b"world!").expect("to the guest");
        let fd = r.host_fd((6000, 1234));
        r.dev.muxer().host_event(fd, EventSet::IN);
        let (h, data) = r.recv(4096).expect("data for the guest");
        assert_eq!((h.op, h.len, h.fwd_cnt), (op::RW, 6, 5));
        assert_eq!(data, b"world!");
        // The guest closes: answered with RST, the host sees its end.
        let mut s = hdr(op::SHUTDOWN, 1234, 6000, 0);
        s.flags = SHUTDOWN_BOTH;
        r.send(s, &[]);
        let (h, _) = r.recv(4096).expect("rst");
        assert_eq!(h.op, op::RST);
        r.dev.muxer().take_changes();
        assert_eq!(host.read(&mut got).expect("eof"), 0);
    }

    #[test]
    fn the_host_protocol_connects_refuses_and_answers_ok_with_a_fresh_port() {
        let mut r = rig("host");
        let mut host = UnixStream::connect(r.socket()).expect("connect");
        let fd = r.accept();
        host.write_all(b"CONNECT 52\nearly").expect("line");
        r.dev.muxer().host_event(fd, EventSet::IN);
        let (h, _) = r.recv(4096).expect("request");
        assert_eq!(
            (h.op, h.dst_port, h.dst_cid, h.src_cid),
            (op::REQUEST, 52, CID, HOST_CID)
        );
        let local = h.src_port;
        assert!(local >= 1 << 30);
        // No credit yet from the guest: the early bytes wait.
        let mut resp = hdr(op::RESPONSE, 52, local, 0);
        resp.buf_alloc = 3;
        r.send(resp, &[]);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).expect("OK line");
        assert_eq!(&line, format!("OK {local}\n").as_bytes());
        // The bytes after the CONNECT line come first, within the guest's 3 bytes of credit.
        let (h, data) = r.recv(4096).expect("prefix");
        assert_eq!((h.op, data.as_slice()), (op::RW, &b"ear"[..]));
        assert!(r.recv(4096).is_none(), "nothing beyond the credit");
        let mut upd = hdr(op::CREDIT_UPDATE, 52, local, 0);
        upd.buf_alloc = 3;
        upd.fwd_cnt = 3;
        r.send(upd, &[]);
        let (_, data) = r.recv(4096).expect("the rest");
        assert_eq!(data, b"ly");

        // A port nothing listens on: the guest answers RST; the host stream is closed.
        let mut other = UnixStream::connect(r.socket()).expect("connect");
        let fd = r.accept();
        other.write_all(b"CONNECT 99\n").expect("line");
        r.dev.muxer().host_event(fd, EventSet::IN);
        let (h, _) = r.recv(4096).expect("request");
        r.send(hdr(op::RST, 99, h.src_port, 0), &[]);
        drop(r.dev.muxer().take_changes());
        let mut b = [0u8; 4];
        assert_eq!(other.read(&mut b).expect("eof"), 0);
    }

    #[test]
    fn malformed_and_hostile_transmit_chains_are_consumed_without_harm() {
        let mut r = rig("malformed");
        let a = r.alloc(4096);
        r.mem
            .write_slice(&hdr(op::REQUEST, 1, 7000, 0).to_bytes(), GuestAddress(a))
            .expect("w");
        r.tx.add_desc_chains(
            &[
                d(a, 10, 0, 0),                 // shorter than a header
                d(0x7fff_0000_0000, 64, 0, 0),  // outside guest RAM
                d(a, HDR_LEN as u32, WRITE, 0), // device-writable
                d(a, 0, 0, 0),                  // zero length
                d(0xfff_ff00, 0x200, 0, 0),     // runs off the end of RAM
            ],
            0,
        )
        .expect("chains");
        r.dev.process_tx();
        assert_eq!(r.tx.used().idx().load(), 5, "every chain is given back");
        assert!(r.recv(4096).is_none(), "nothing came of them");
        // Packets from another CID are dropped; to another CID, refused.
        let mut spoofed = hdr(op::REQUEST, 1, 7000, 0);
        spoofed.src_cid = 99;
        r.send(spoofed, &[]);
        assert!(r.recv(4096).is_none());
        let mut elsewhere = hdr(op::REQUEST, 1, 7000, 0);
        elsewhere.dst_cid = 7;
        r.send(elsewhere, &[]);
        assert_eq!(r.recv(4096).expect("rst").0.op, op::RST);
        // A receive buffer too small for a header is given back empty.
        let _l = UnixListener::bind(format!("{}_7000", r.socket().display())).expect("bind");
        r.send(hdr(op::REQUEST, 5, 7000, 0), &[]);
        assert_eq!(r.recv(16).expect("used").1.len(), 0);
        assert_eq!(r.recv(4096).expect("response").0.op, op::RESPONSE);
        // Data beyond the announced buffer, or shorter than its header says: reset.
        r.send(hdr(op::RW, 5, 7000, CONN_BUF + 1), &[]);
        assert_eq!(r.recv(4096).expect("rst").0.op, op::RST);
        r.send(hdr(op::REQUEST, 6, 7000, 0), &[]);
        assert_eq!(r.recv(4096).expect("response").0.op, op::RESPONSE);
        let a = r.alloc(4096);
        r.mem
            .write_slice(&hdr(op::RW, 6, 7000, 1000).to_bytes(), GuestAddress(a))
            .expect("w");
        r.tx.add_desc_chains(&[d(a, HDR_LEN as u32 + 10, 0, 0)], 0)
            .expect("short");
        r.dev.process_tx();
        assert_eq!(r.recv(4096).expect("rst").0.op, op::RST);
        assert_eq!(r.dev.muxer().connections(), 0);
    }

    #[test]
    fn a_guest_that_posts_no_receive_buffers_or_floods_requests_holds_bounded_state() {
        let mut r = rig("flood");
        // Thousands of packets for connections that do not exist, and no receive buffers:
        // the resets owed are bounded.
        for i in 0..3000u32 {
            r.send(hdr(op::RW, i, 7001, 0), &[]);
        }
        let mut n = 0;
        while r.recv(4096).is_some() {
            n += 1;
        }
        assert!(n > 0 && n <= 1024, "{n} resets kept");
        // Requests to a listener until the connection limit: refused beyond it.
        let _l = UnixListener::bind(format!("{}_7002", r.socket().display())).expect("bind");
        for i in 0..(MAX_CONNS as u32 + 10) {
            r.send(hdr(op::REQUEST, i, 7002, 0), &[]);
            r.dev.muxer().take_changes();
        }
        assert_eq!(r.dev.muxer().connections(), MAX_CONNS);
        // A flood of device resets closes everything each time.
        for _ in 0..50 {
            r.dev.reset();
            r.dev.muxer().take_changes();
        }
        assert_eq!(r.dev.muxer().connections(), 0);
        assert!(!r.dev.muxer().has_rx());
    }

    #[test]
    fn a_restored_device_tells_the_guest_its_connections_are_gone() {
        let r = rig("restore");
        let st = r.dev.state();
        let mem = r.mem.clone();
        let dir = r.dir.join("second");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let mut dev = VirtioVsock::new(CID, Muxer::new(CID, path, listener), mem.clone());
        let evt = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        dev.restore(&st, VirtioInterrupt::new(irq))
            .expect("restore");
        evt.add_desc_chains(&[d(0x300000, 4, WRITE, 0)], 0)
            .expect("event buffer");
        dev.process_event();
        assert_eq!(evt.used().idx().load(), 1);
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(0x300000)).expect("r");
        assert_eq!(u32::from_le_bytes(b), EVENT_TRANSPORT_RESET);
        // Another CID's state does not fit.
        let VirtioDeviceState::Vsock(mut other) = st else {
            panic!("vsock state")
        };
        other.cid = 4;
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        assert!(dev
            .restore(&VirtioDeviceState::Vsock(other), VirtioInterrupt::new(irq))
            .is_err());
    }

    #[test]
    fn deadlines_close_a_silent_host_and_a_request_the_guest_never_answers() {
        use crate::virtio::vsock::muxer::{CONNECT_LINE_TIMEOUT, REQUEST_TIMEOUT};
        use std::time::Instant;
        let mut r = rig("deadlines");
        // A host that connects and sends nothing.
        let mut silent = UnixStream::connect(r.socket()).expect("connect");
        r.accept();
        // A host whose request the guest never answers.
        let mut asking = UnixStream::connect(r.socket()).expect("connect");
        let fd = r.accept();
        asking.write_all(b"CONNECT 80\n").expect("line");
        r.dev.muxer().host_event(fd, EventSet::IN);
        let (h, _) = r.recv(4096).expect("request");
        assert_eq!(h.op, op::REQUEST);
        assert!(r.dev.muxer().has_deadlines());
        // Before the deadlines nothing happens; after them both streams are closed and the
        // guest is told to forget the request.
        r.dev.muxer().tick(Instant::now());
        assert_eq!(r.dev.muxer().connections(), 1);
        r.dev
            .muxer()
            .tick(Instant::now() + REQUEST_TIMEOUT + REQUEST_TIMEOUT);
        assert_eq!(r.dev.muxer().connections(), 0);
        assert_eq!(r.recv(4096).expect("rst").0.op, op::RST);
        r.dev
            .muxer()
            .tick(Instant::now() + CONNECT_LINE_TIMEOUT + CONNECT_LINE_TIMEOUT);
        drop(r.dev.muxer().take_changes());
        assert!(!r.dev.muxer().has_deadlines());
        let mut b = [0u8; 4];
        assert_eq!(asking.read(&mut b).expect("closed"), 0);
        assert_eq!(silent.read(&mut b).expect("closed"), 0);
    }
}
