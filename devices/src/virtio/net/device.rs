//! The virtio-net device model: features, configuration space (MAC, link status), and the
//! receive and transmit paths the [`super::NetHandler`] runs on the event-loop thread.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_LEN};
use super::QUEUE_SIZE;
use crate::virtio::{
    ActivateError, GuestMemoryMmap, VirtioDevice, VirtioDeviceState, VirtioInterrupt, INT_VRING,
};

/// The largest frame: a 64 KiB packet with its Ethernet and virtio-net headers.
pub const FRAME_MAX: usize = VNET_HDR_LEN + 65_550;
/// Frames moved per event before the event loop serves others.
const BATCH: usize = 256;
const RX: usize = 0;
const TX: usize = 1;

/// A virtio-net device's state as plain data.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    /// The TAP's name (reopened on restore from the configuration).
    pub tap: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Receive and transmit queues while active.
    pub queues: Option<[crate::virtio::QueueSnapshot; 2]>,
    /// Frames dropped because they did not fit the guest's buffer.
    pub rx_dropped: u64,
    /// The features the driver accepted (the TAP's offloads follow from them).
    pub acked_features: u64,
}

/// The features offered: checksum and TCP segmentation offloads both ways (the TAP takes
/// and gives the virtio-net header as is), mergeable receive buffers, EVENT_IDX and
/// indirect descriptors.
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// The TAP offloads (`TUNSETOFFLOAD`) for the receive-side features the guest accepted: what
/// the TAP may hand up is what the guest said it can take.
pub fn tap_offload(acked: u64) -> u32 {
    let has = |f: u32| acked & (1u64 << f) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        // Segmentation offloads need checksum offload (tun refuses them alone).
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            flags |= TUN_F_TSO_ECN;
        }
    }
    flags
}

struct Active {
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
}

/// What a receive pass ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The TAP has no more frames.
    Drained,
    /// A frame waits and the guest has posted no buffer: stop watching the TAP until it does.
    NoBuffers,
    /// The batch limit: come back.
    More,
}

/// What a transmit pass ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum TxOutcome {
    /// Every available frame went out.
    Done,
    /// The TAP is full: retry when it is writable (nothing is lost).
    Blocked,
    /// The batch limit: come back.
    More,
}

/// A virtio-net device on a TAP.
pub struct VirtioNet {
    tap: Tap,
    mem: GuestMemoryMmap,
    mac: [u8; 6],
    config: [u8; 8],
    active: Option<Active>,
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// Receive chains taken for the waiting frame (mergeable buffers: a frame may need
    /// several), with their writable segments in `rx_segs` from the index given.
    rx_chains: Vec<(u16, usize)>,
    rx_segs: Vec<(u64, u32)>,
    /// Bytes the taken chains can hold.
    rx_room: usize,
    tx_frame: Vec<u8>,
    /// A frame the TAP refused with EAGAIN, and the chain it came from.
    tx_pending: Option<u16>,
    rx_dropped: u64,
    acked: u64,
    /// TAP offloads to set from the event loop (the vCPU thread that activates the device
    /// may not make that ioctl).
    offload_pending: Option<u32>,
}

impl VirtioNet {
    /// A device on `tap` with address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6], mem: GuestMemoryMmap) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            tap,
            mem,
            mac,
            config,
            active: None,
            rx_frame: vec![0; FRAME_MAX],
            rx_len: 0,
            rx_chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_room: 0,
            tx_frame: Vec::with_capacity(FRAME_MAX),
            tx_pending: None,
            rx_dropped: 0,
            acked: 0,
            offload_pending: None,
        }
    }

    /// Sets the TAP's offloads the driver's features call for, once, from the event loop.
    fn apply_offload(&mut self) {
        if let Some(flags) = self.offload_pending.take() {
            if let Err(e) = self.tap.set_offload(flags) {
                log::warn!(
                    "net: cannot set offloads {flags:#x} on {}: {e}",
                    self.tap.name()
                );
            }
        }
    }

    /// The TAP's descriptor, for the event loop.
    pub fn tap_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.tap)
    }

    /// Frames dropped because they did not fit the buffer the guest gave.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_dropped
    }

    fn notify(&mut self, queue: usize) {
        let mem = &self.mem;
        if let Some(a) = self.active.as_mut() {
            let q = if queue == RX { &mut a.rx } else { &mut a.tx };
            if q.needs_notification(mem).unwrap_or(true) {
                let _ = a.interrupt.trigger(INT_VRING);
            }
        }
    }

    /// Moves frames from the TAP into the guest's receive buffers.
    pub fn process_rx(&mut self) -> RxOutcome {
        self.apply_offload();
        let mut delivered = false;
        let mut outcome = RxOutcome::More;
        for _ in 0..BATCH {
            if self.rx_len == 0 {
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_len = n,
                    Ok(_) => continue, // a runt: nothing to deliver
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        outcome = RxOutcome::Drained;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("net: TAP read: {e}");
                        outcome = RxOutcome::Drained;
                        break;
                    }
                }
            }
            if self.active.is_none() {
                self.rx_len = 0; // not running: the frame goes nowhere
                continue;
            }
            match self.take_rx_chains() {
                Some(true) => {}
                Some(false) => {
                    // A chain the frame cannot use: dropped and counted, never cut.
                    self.give_back_rx_chains(false);
                    self.rx_dropped += 1;
                    self.rx_len = 0;
                    delivered = true;
                    continue;
                }
                None => {
                    // Not enough buffers: keep what was taken and ask for a kick when more
                    // come (buffers that came meanwhile are used at once).
                    let more = self
                        .active
                        .as_mut()
                        .map(|a| a.rx.enable_notification(&self.mem).unwrap_or(false));
                    if more == Some(true) {
                        continue;
                    }
                    outcome = RxOutcome::NoBuffers;
                    break;
                }
            }
            let ok = self.write_rx_frame();
            if !ok {
                self.rx_dropped += 1;
            }
            self.give_back_rx_chains(ok);
            self.rx_len = 0;
            delivered = true;
        }
        if delivered {
            self.notify(RX);
        }
        outcome
    }

    fn mergeable(&self) -> bool {
        self.acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Takes receive chains until they hold the waiting frame: `Some(true)` when they do,
    /// `Some(false)` for a chain that cannot be used (read-only descriptors, or too small
    /// without mergeable buffers), `None` when the guest has posted too few.
    fn take_rx_chains(&mut self) -> Option<bool> {
        let mergeable = self.mergeable();
        let a = self.active.as_mut()?;
        while self.rx_room < self.rx_len {
            // One chain without mergeable buffers; never more chains than the queue holds
            // (a guest republishing zero-length buffers must not grow this list for ever).
            if (!mergeable && !self.rx_chains.is_empty())
                || self.rx_chains.len() >= usize::from(QUEUE_SIZE)
            {
                return Some(false);
            }
            let chain = a.rx.pop_descriptor_chain(&self.mem)?;
            self.rx_chains
                .push((chain.head_index(), self.rx_segs.len()));
            for d in chain {
                if !d.is_write_only() {
                    return Some(false);
                }
                self.rx_segs.push((d.addr().0, d.len()));
                self.rx_room = self.rx_room.saturating_add(d.len() as usize);
            }
        }
        Some(true)
    }

    /// Writes the waiting frame over the taken chains, `num_buffers` first.
    fn write_rx_frame(&mut self) -> bool {
        let chains = self.rx_chains.len() as u16;
        self.rx_frame[10..12].copy_from_slice(&chains.to_le_bytes());
        let frame = &self.rx_frame[..self.rx_len];
        let mut written = 0usize;
        for &(addr, len) in &self.rx_segs {
            if written == frame.len() {
                break;
            }
            let n = (len as usize).min(frame.len() - written);
            if self
                .mem
                .write_slice(&frame[written..written + n], GuestAddress(addr))
                .is_err()
            {
                return false;
            }
            written += n;
        }
        written == frame.len()
    }

    /// Returns the taken chains to the guest: with the frame's bytes spread over them in
    /// order if `filled`, empty otherwise.
    fn give_back_rx_chains(&mut self, filled: bool) {
        let mut left = if filled { self.rx_len } else { 0 };
        if let Some(a) = self.active.as_mut() {
            for (i, &(head, first)) in self.rx_chains.iter().enumerate() {
                let last = self
                    .rx_chains
                    .get(i + 1)
                    .map_or(self.rx_segs.len(), |c| c.1);
                let room: usize = self.rx_segs[first..last].iter().map(|s| s.1 as usize).sum();
                let used = room.min(left);
                left -= used;
                let _ = a.rx.add_used(&self.mem, head, used as u32);
            }
        }
        self.rx_chains.clear();
        self.rx_segs.clear();
        self.rx_room = 0;
    }

    /// Sends the guest's transmit chains to the TAP.
    pub fn process_tx(&mut self) -> TxOutcome {
        self.apply_offload();
        let mut completed = false;
        let mut budget = BATCH;
        let outcome = 'serve: loop {
            // No kicks while the queue is being drained (virtio 1.2 §2.7.10).
            if let Some(a) = self.active.as_mut() {
                let _ = a.tx.disable_notification(&self.mem);
            }
            loop {
                if budget == 0 {
                    break 'serve TxOutcome::More;
                }
                budget -= 1;
                let Some(a) = self.active.as_mut() else {
                    break 'serve TxOutcome::Done;
                };
                let head = match self.tx_pending {
                    Some(h) => h,
                    None => {
                        let Some(chain) = a.tx.pop_descriptor_chain(&self.mem) else {
                            break;
                        };
                        let head = chain.head_index();
                        self.tx_frame.clear();
                        let mut ok = true;
                        for d in chain {
                            let len = d.len() as usize;
                            if d.is_write_only() || self.tx_frame.len() + len > FRAME_MAX {
                                ok = false;
                                break;
                            }
                            let start = self.tx_frame.len();
                            self.tx_frame.resize(start + len, 0);
                            if self
                                .mem
                                .read_slice(&mut self.tx_frame[start..], GuestAddress(d.addr().0))
                                .is_err()
                            {
                                ok = false;
                                break;
                            }
                        }
                        if !ok || self.tx_frame.len() <= VNET_HDR_LEN {
                            // Malformed: consumed and dropped.
                            self.tx_frame.clear();
                            let _ = a.tx.add_used(&self.mem, head, 0);
                            completed = true;
                            continue;
                        }
                        head
                    }
                };
                match self.tap.write_frame(&self.tx_frame) {
                    Ok(_) => {
                        self.tx_pending = None;
                        if let Some(a) = self.active.as_mut() {
                            let _ = a.tx.add_used(&self.mem, head, 0);
                        }
                        completed = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.tx_pending = Some(head);
                        break 'serve TxOutcome::Blocked;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        self.tx_pending = Some(head);
                    }
                    Err(e) => {
                        // The interface refused this frame (down, too large): dropped, not stuck.
                        log::debug!("net: TAP write: {e}");
                        self.tx_pending = None;
                        if let Some(a) = self.active.as_mut() {
                            let _ = a.tx.add_used(&self.mem, head, 0);
                        }
                        completed = true;
                    }
                }
            }
            // Drained: kicks again, and another round if chains came meanwhile.
            let more = self
                .active
                .as_mut()
                .map(|a| a.tx.enable_notification(&self.mem).unwrap_or(false));
            if more != Some(true) {
                break TxOutcome::Done;
            }
        };
        if completed {
            self.notify(TX);
        }
        outcome
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("net: ignored configuration write at {offset:#x}");
    }

    fn activate(
        &mut self,
        features: u64,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let mut it = queues.into_iter();
        let mut rx = it.next().ok_or(ActivateError::BadQueue(RX))?;
        let mut tx = it.next().ok_or(ActivateError::BadQueue(TX))?;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        self.acked = features;
        self.offload_pending = Some(tap_offload(features));
        self.active = Some(Active { rx, tx, interrupt });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_pending = None;
        self.rx_len = 0;
        self.rx_chains.clear();
        self.rx_segs.clear();
        self.rx_room = 0;
        self.acked = 0;
        // A driver to come may take no offloads.
        self.offload_pending = Some(0);
    }

    fn state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(NetState {
            tap: self.tap.name().to_string(),
            mac: self.mac,
            queues: self.active.as_ref().map(|a| {
                let mut rx = a.rx.state();
                // Chains taken for a frame not delivered yet go back to the guest: the frame
                // is not part of the snapshot (a network may lose a frame).
                rx.next_avail = rx.next_avail.wrapping_sub(self.rx_chains.len() as u16);
                [
                    crate::virtio::QueueSnapshot(rx),
                    crate::virtio::QueueSnapshot(a.tx.state()),
                ]
            }),
            rx_dropped: self.rx_dropped,
            acked_features: self.acked,
        })
    }

    fn restore(
        &mut self,
        state: &VirtioDeviceState,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let VirtioDeviceState::Net(s) = state else {
            return Err(ActivateError::BadState("not a network device's state"));
        };
        if s.mac != self.mac {
            return Err(ActivateError::BadState("another MAC address"));
        }
        self.rx_dropped = s.rx_dropped;
        self.acked = s.acked_features;
        self.offload_pending = Some(tap_offload(s.acked_features));
        self.active = match &s.queues {
            None => None,
            Some([rx, tx]) => {
                let rx = Queue::try_from(rx.0).map_err(|_| ActivateError::BadQueue(RX))?;
                let tx = Queue::try_from(tx.0).map_err(|_| ActivateError::BadQueue(TX))?;
                if !rx.is_valid(&self.mem) || !tx.is_valid(&self.mem) {
                    return Err(ActivateError::BadQueue(RX));
                }
                Some(Active { rx, tx, interrupt })
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    struct Rig {
        mem: GuestMemoryMmap,
        dev: VirtioNet,
        host: std::fs::File,
        rx: MockSplitQueue<'static, GuestMemoryMmap>,
        tx: MockSplitQueue<'static, GuestMemoryMmap>,
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn rig() -> Rig {
        rig_with(1 << VIRTIO_F_VERSION_1)
    }

    fn rig_with(features: u64) -> Rig {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("memory"),
        ));
        let (tap, host) = Tap::pair();
        let mut dev = VirtioNet::new(tap, [6, 0, 0, 0, 0, 1], mem.clone());
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x10000), 16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        dev.activate(
            features,
            vec![
                rx.create_queue().expect("rx"),
                tx.create_queue().expect("tx"),
            ],
            VirtioInterrupt::new(irq),
        )
        .expect("activate");
        Rig {
            mem: mem.clone(),
            dev,
            host,
            rx,
            tx,
        }
    }

    fn used(q: &MockSplitQueue<'static, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = q.used().idx().load();
        (0..n)
            .map(|i| {
                let e = q.used().ring().ref_at(i as usize).expect("used").load();
                (e.id(), e.len())
            })
            .collect()
    }

    #[test]
    fn a_frame_goes_out_whatever_its_descriptor_layout() {
        let mut r = rig();
        let frame: Vec<u8> = (0..100u8).collect();
        r.mem
            .write_slice(&frame[..30], GuestAddress(0x40000))
            .expect("w");
        r.mem
            .write_slice(&frame[30..], GuestAddress(0x50000))
            .expect("w");
        r.tx.add_desc_chains(&[d(0x40000, 30, NEXT, 1), d(0x50000, 70, 0, 0)], 0)
            .expect("chain");
        assert_eq!(r.dev.process_tx(), TxOutcome::Done);
        let mut got = vec![0u8; 200];
        let n = r.host.read(&mut got).expect("frame");
        assert_eq!(&got[..n], &frame[..]);
        assert_eq!(used(&r.tx), vec![(0, 0)]);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_not_sent() {
        let mut r = rig();
        // A device-writable descriptor, one outside RAM, and one too short for a header.
        r.tx.add_desc_chains(
            &[
                d(0x40000, 64, WRITE, 0),
                d(0x7fff_0000_0000, 64, 0, 0),
                d(0x40000, 4, 0, 0),
            ],
            0,
        )
        .expect("chains");
        assert_eq!(r.dev.process_tx(), TxOutcome::Done);
        let mut got = [0u8; 64];
        assert!(r.host.read(&mut got).is_err(), "nothing sent");
        assert_eq!(used(&r.tx).len(), 3, "every chain is given back");
    }

    #[test]
    fn a_received_frame_gets_num_buffers_and_one_that_does_not_fit_is_dropped_and_counted() {
        let mut r = rig();
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend((0..60u8).map(|b| b ^ 0x5a));
        r.host.write_all(&frame).expect("to the guest");
        // No buffers posted: the frame waits.
        assert_eq!(r.dev.process_rx(), RxOutcome::NoBuffers);
        r.rx.add_desc_chains(
            &[d(0x40000, 40, WRITE | NEXT, 1), d(0x50000, 100, WRITE, 0)],
            0,
        )
        .expect("buffers");
        assert_eq!(r.dev.process_rx(), RxOutcome::Drained);
        assert_eq!(used(&r.rx), vec![(0, frame.len() as u32)]);
        let mut back = vec![0u8; frame.len()];
        r.mem
            .read_slice(&mut back[..40], GuestAddress(0x40000))
            .expect("r");
        r.mem
            .read_slice(&mut back[40..], GuestAddress(0x50000))
            .expect("r");
        assert_eq!(&back[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_eq!(&back[VNET_HDR_LEN..], &frame[VNET_HDR_LEN..]);
        // A frame larger than the next buffer: dropped, counted, never cut.
        r.host.write_all(&vec![1u8; 1500]).expect("big");
        r.rx.add_desc_chains(&[d(0x60000, 100, WRITE, 0)], 0)
            .expect("small buffer");
        r.dev.process_rx();
        assert_eq!(r.dev.rx_dropped(), 1);
        assert_eq!(used(&r.rx)[1], (0, 0));
    }

    #[test]
    fn a_reset_device_forgets_its_queues_and_frames() {
        let mut r = rig();
        r.host.write_all(&[0u8; 64]).expect("frame");
        assert_eq!(r.dev.process_rx(), RxOutcome::NoBuffers);
        r.dev.reset();
        assert_eq!(r.dev.process_rx(), RxOutcome::Drained);
        assert_eq!(r.dev.process_tx(), TxOutcome::Done);
        let st = r.dev.state();
        let VirtioDeviceState::Net(s) = st else {
            panic!("net state")
        };
        assert!(s.queues.is_none());
    }

    #[test]
    fn with_mergeable_buffers_a_frame_spans_chains_and_waits_for_enough_of_them() {
        let mut r = rig_with((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF));
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend((0..2500u32).map(|i| (i % 251) as u8));
        r.host.write_all(&frame).expect("to the guest");
        // 1000 bytes posted: not enough; the chain is kept, nothing is used yet.
        r.rx.add_desc_chains(&[d(0x40000, 1000, WRITE, 0)], 0)
            .expect("first buffer");
        assert_eq!(r.dev.process_rx(), RxOutcome::NoBuffers);
        assert!(used(&r.rx).is_empty(), "no partial frame is handed over");
        // Two more: the frame goes over the three, num_buffers = 3.
        r.rx.add_desc_chains(&[d(0x50000, 1000, WRITE, 0), d(0x60000, 1000, WRITE, 0)], 1)
            .expect("more buffers");
        assert_eq!(r.dev.process_rx(), RxOutcome::Drained);
        let u = used(&r.rx);
        assert_eq!(
            u.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec![1000, 1000, 512]
        );
        let mut back = vec![0u8; frame.len()];
        for (i, base) in [0x40000u64, 0x50000, 0x60000].iter().enumerate() {
            let n = (frame.len() - i * 1000).min(1000);
            r.mem
                .read_slice(&mut back[i * 1000..i * 1000 + n], GuestAddress(*base))
                .expect("r");
        }
        assert_eq!(&back[10..12], &3u16.to_le_bytes(), "num_buffers");
        assert_eq!(&back[VNET_HDR_LEN..], &frame[VNET_HDR_LEN..]);
    }

    #[test]
    fn the_taps_offloads_follow_what_the_guest_accepted() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | (1 << b));
        assert_eq!(tap_offload(0), 0);
        // TSO without checksum offload is not asked of the TAP (it would refuse).
        assert_eq!(tap_offload(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
        assert_eq!(tap_offload(f(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
        assert_eq!(
            tap_offload(f(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN
            ])),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        // Host-side offloads change nothing the TAP hands up.
        assert_eq!(
            tap_offload(f(&[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_CSUM])),
            0
        );
        assert_eq!(
            FEATURES & f(&[VIRTIO_NET_F_MRG_RXBUF]),
            f(&[VIRTIO_NET_F_MRG_RXBUF])
        );
    }

    #[test]
    fn a_snapshot_gives_back_chains_taken_for_an_undelivered_frame() {
        let mut r = rig_with((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF));
        r.host.write_all(&vec![7u8; 3000]).expect("frame");
        r.rx.add_desc_chains(&[d(0x40000, 1000, WRITE, 0)], 0)
            .expect("buffer");
        assert_eq!(r.dev.process_rx(), RxOutcome::NoBuffers);
        let VirtioDeviceState::Net(s) = r.dev.state() else {
            panic!("net state")
        };
        let [rx, _] = s.queues.expect("active");
        assert_eq!(rx.0.next_avail, 0, "the taken chain is the guest's again");
    }

    #[test]
    fn a_guest_republishing_empty_buffers_cannot_grow_the_taken_chains_without_bound() {
        let mut r = rig_with((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF));
        r.host.write_all(&vec![3u8; 1000]).expect("frame");
        // Rounds of zero-length buffers: the frame can never fit.
        for _ in 0..4 {
            let chains: Vec<_> = (0..16).map(|_| d(0x40000, 0, WRITE, 0)).collect();
            r.rx.add_desc_chains(&chains, 0).expect("empty buffers");
            r.dev.process_rx();
        }
        assert!(r.dev.rx_chains.len() <= usize::from(QUEUE_SIZE));
        // Once the limit is reached the frame is dropped and every chain given back.
        for _ in 0..20 {
            let chains: Vec<_> = (0..16).map(|_| d(0x40000, 0, WRITE, 0)).collect();
            r.rx.add_desc_chains(&chains, 0).expect("empty buffers");
            r.dev.process_rx();
        }
        assert!(
            r.dev.rx_dropped() >= 1,
            "the frame that cannot fit is dropped"
        );
        assert!(r.dev.rx_chains.len() < usize::from(QUEUE_SIZE));
    }

    #[test]
    fn a_frame_the_tap_refuses_for_lack_of_room_waits_and_goes_out_later() {
        let mut r = rig();
        // Fill the stand-in's socket buffer from the device until it refuses.
        let frame = vec![0x5au8; 1500];
        r.mem.write_slice(&frame, GuestAddress(0x40000)).expect("w");
        let mut blocked = false;
        for _ in 0..2000 {
            r.tx.add_desc_chains(&[d(0x40000, 1500, 0, 0)], 0)
                .expect("chain");
            if r.dev.process_tx() == TxOutcome::Blocked {
                blocked = true;
                break;
            }
        }
        assert!(blocked, "the socket never filled");
        let pending = r.dev.tx_pending.expect("the refused frame is kept");
        let used_before = r.tx.used().idx().load();
        // The host reads: the frame goes out on the next pass, then its chain is given back.
        let mut buf = vec![0u8; 2000];
        // SAFETY: fcntl on the test's own descriptor.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&r.host);
            libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
            );
        }
        while r.host.read(&mut buf).is_ok() {}
        assert_eq!(r.dev.process_tx(), TxOutcome::Done);
        assert!(r.dev.tx_pending.is_none());
        assert!(
            r.tx.used().idx().load() > used_before,
            "chain {pending} given back"
        );
    }
}
