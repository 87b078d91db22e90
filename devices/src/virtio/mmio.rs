//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): the register file a driver
//! uses to discover a device, negotiate features, set up queues and drive the status state
//! machine (§2.1, §3.1.1). Registers are 32-bit; other widths are ignored. Writes that break
//! the order the spec sets (features after FEATURES_OK, queue setup after DRIVER_OK, status
//! bits cleared without a reset) are ignored. Not supported: shared memory regions, legacy
//! (version 1) devices.

use std::sync::{Arc, Mutex};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use virtio_bindings::virtio_mmio as mmio;

use super::{ActivateError, GuestMemoryMmap, VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;

const MAGIC_VALUE: u64 = mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
const VERSION: u64 = mmio::VIRTIO_MMIO_VERSION as u64;
const DEVICE_ID: u64 = mmio::VIRTIO_MMIO_DEVICE_ID as u64;
const VENDOR_ID: u64 = mmio::VIRTIO_MMIO_VENDOR_ID as u64;
const DEVICE_FEATURES: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const DEVICE_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const DRIVER_FEATURES: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const DRIVER_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const QUEUE_SEL: u64 = mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
const QUEUE_NUM_MAX: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const QUEUE_NUM: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
const QUEUE_READY: u64 = mmio::VIRTIO_MMIO_QUEUE_READY as u64;
/// Offset of the `QueueNotify` register, where the VMM places the ioeventfd.
pub const QUEUE_NOTIFY: u64 = mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
const INTERRUPT_STATUS: u64 = mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const INTERRUPT_ACK: u64 = mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const STATUS: u64 = mmio::VIRTIO_MMIO_STATUS as u64;
const QUEUE_DESC_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const QUEUE_DESC_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const QUEUE_DRIVER_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const QUEUE_DRIVER_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const QUEUE_DEVICE_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const QUEUE_DEVICE_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const CONFIG_GENERATION: u64 = mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
const CONFIG: u64 = mmio::VIRTIO_MMIO_CONFIG as u64;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR: u32 = 0x5242_4d45; // "EMBR"

/// A virtio-mmio transport's state as plain data (for snapshots): its registers, the queues as
/// the driver set them up, the pending interrupt bits and the device's own state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioTransportState {
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Device status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The queues' registers.
    pub queues: Vec<crate::virtio::QueueSnapshot>,
    /// The device behind the transport.
    pub device: crate::virtio::VirtioDeviceState,
}

/// The transport of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    warnings_left: u32,
}

impl MmioTransport {
    /// A transport for `device`; `queue_evts` (one per queue) are the ioeventfds the VMM
    /// registers on `QueueNotify`, also kicked by hand for notifications that reach the bus.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            d.queue_max_sizes()
                .iter()
                .filter_map(|&max| Queue::new(max).ok())
                .collect()
        };
        Self {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            warnings_left: 8,
        }
    }

    /// The state, as plain data (the VM is paused).
    pub fn state(&self) -> MmioTransportState {
        MmioTransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .map(|q| crate::virtio::QueueSnapshot(q.state()))
                .collect(),
            device: self.with_device(|d| d.state()),
        }
    }

    /// Takes `state` back on a fresh transport for a fresh device of the same kind: registers,
    /// queues, the device (re-activated with its queues when it was active) and the pending
    /// interrupt bits, which are raised again. Then every queue is kicked, so requests the
    /// guest had made available are served.
    pub fn restore(&mut self, state: &MmioTransportState) -> Result<(), ActivateError> {
        if state.queues.len() != self.queues.len() {
            return Err(ActivateError::BadState("another number of queues"));
        }
        for (i, (q, s)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            if s.0.max_size != q.max_size() {
                return Err(ActivateError::BadState("another queue size"));
            }
            *q = Queue::try_from(s.0).map_err(|_| ActivateError::BadQueue(i))?;
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.config_generation = state.config_generation;
        let interrupt = self.interrupt.clone();
        self.with_device(|d| d.restore(&state.device, interrupt))?;
        if let Err(e) = self.interrupt.restore_status(state.interrupt_status) {
            warn!("virtio-mmio: cannot raise a restored interrupt: {e}");
        }
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn with_device<T>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> T) -> T {
        let mut d = self.device.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *d)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_setup_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn features_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
    }

    fn reset(&mut self) {
        self.with_device(|d| d.reset());
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.with_device(|d| d.device_type()),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => {
                let f = self.with_device(|d| d.features());
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => {
                if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
                    && self.with_device(|d| d.needs_reset())
                {
                    self.status | VIRTIO_CONFIG_S_NEEDS_RESET
                } else {
                    self.status
                }
            }
            CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.features_allowed() => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if self.queue_setup_allowed() => {
                // Only a power of two up to the maximum is taken (§2.7); anything else is
                // ignored here rather than logged as an error by virtio-queue.
                if let Some(q) = self.selected_queue() {
                    if v.is_power_of_two() && v <= u32::from(q.max_size()) {
                        q.set_size(v as u16);
                    } else {
                        debug!("virtio-mmio: queue size {v} ignored");
                    }
                }
            }
            QUEUE_READY if self.queue_setup_allowed() => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
                if self.queue_setup_allowed() =>
            {
                let (lo, hi) = if offset & 0x4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !0x4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; reaching the bus means another width.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.write_status(v),
            _ => debug!("virtio-mmio: ignored write {v:#x} to register {offset:#x}"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // Status bits are only ever added (§2.1.2); the order is ACKNOWLEDGE, DRIVER,
        // FEATURES_OK, DRIVER_OK.
        if v & self.status != self.status {
            debug!(
                "virtio-mmio: status {v:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        let ok = match new {
            VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status == 0,
            VIRTIO_CONFIG_S_DRIVER => self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => {
                self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status
                    == VIRTIO_CONFIG_S_ACKNOWLEDGE
                        | VIRTIO_CONFIG_S_DRIVER
                        | VIRTIO_CONFIG_S_FEATURES_OK
            }
            _ => false,
        };
        if !ok {
            debug!(
                "virtio-mmio: status {v:#x} out of order after {:#x}; ignored",
                self.status
            );
            return;
        }
        match new {
            VIRTIO_CONFIG_S_FEATURES_OK => {
                let offered = self.with_device(|d| d.features());
                let acked = self.driver_features;
                if acked & !offered != 0 || acked & (1 << VIRTIO_F_VERSION_1) == 0 {
                    // Leave FEATURES_OK clear: the driver sees the refusal (§3.1.1 step 6).
                    debug!(
                        "virtio-mmio: driver features {acked:#x} refused (offered {offered:#x})"
                    );
                    return;
                }
                self.status = v;
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                for (i, q) in self.queues.iter().enumerate() {
                    if !q.ready() || !q.is_valid(&self.mem) {
                        debug!(
                            "virtio-mmio: queue {i} is not usable at DRIVER_OK; device needs reset"
                        );
                        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                        return;
                    }
                }
                let queues: Vec<Queue> = self
                    .queues
                    .iter()
                    .filter_map(|q| Queue::try_from(q.state()).ok())
                    .collect();
                let features = self.driver_features;
                let interrupt = self.interrupt.clone();
                match self.with_device(|d| d.activate(features, queues, interrupt)) {
                    Ok(()) => self.status = v,
                    Err(e) => {
                        // Guest-caused: a budget for the transport's whole life.
                        if self.warnings_left > 0 {
                            self.warnings_left -= 1;
                            warn!("virtio-mmio: activation failed: {e}");
                        }
                        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                    }
                }
            }
            _ => self.status = v,
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            let off = offset - CONFIG;
            self.with_device(|d| d.read_config(off, data));
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            let off = offset - CONFIG;
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0 {
                self.with_device(|d| d.write_config(off, data));
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!("virtio-mmio: {}-byte register write ignored", data.len());
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Dummy {
        activated: Option<(u64, usize)>,
        resets: u32,
        config: [u8; 8],
        restored: Option<String>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | (1 << 9)
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            features: u64,
            queues: Vec<Queue>,
            _interrupt: VirtioInterrupt,
        ) -> Result<(), super::super::ActivateError> {
            self.activated = Some((features, queues.len()));
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
        fn state(&self) -> crate::virtio::VirtioDeviceState {
            // Any kind will do for the transport's tests: the serial carries what was active.
            crate::virtio::VirtioDeviceState::Block(crate::virtio::block::BlockState {
                path: "/dummy".into(),
                sectors: 1,
                read_only: true,
                serial: format!("{:?}", self.activated),
                queue: None,
                write_through: false,
                broken: false,
                warnings_left: 0,
            })
        }
        fn restore(
            &mut self,
            state: &crate::virtio::VirtioDeviceState,
            _interrupt: VirtioInterrupt,
        ) -> Result<(), super::super::ActivateError> {
            let crate::virtio::VirtioDeviceState::Block(s) = state else {
                return Err(super::super::ActivateError::BadState("kind"));
            };
            self.restored = Some(s.serial.clone());
            Ok(())
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>, EventFd) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        let dev = Arc::new(Mutex::new(Dummy {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        }));
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let kick = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let t = MmioTransport::new(
            dev.clone(),
            mem,
            VirtioInterrupt::new(irq),
            vec![kick.try_clone().expect("clone")],
        );
        (t, dev, kick)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, STATUS, 1);
        w(t, STATUS, 3);
        w(t, DRIVER_FEATURES_SEL, 1);
        w(t, DRIVER_FEATURES, 1);
        w(t, DRIVER_FEATURES_SEL, 0);
        w(t, DRIVER_FEATURES, 1 << 9);
        w(t, STATUS, 11);
    }

    fn setup_queue(t: &mut MmioTransport) {
        w(t, QUEUE_SEL, 0);
        w(t, QUEUE_NUM, 16);
        w(t, QUEUE_DESC_LOW, 0x1000);
        w(t, QUEUE_DRIVER_LOW, 0x2000);
        w(t, QUEUE_DEVICE_LOW, 0x3000);
        w(t, QUEUE_READY, 1);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = setup();
        assert_eq!(r(&mut t, MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VERSION), 2);
        assert_eq!(r(&mut t, DEVICE_ID), 2);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 16);
        w(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1);
        w(&mut t, DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 1 << 9);
        w(&mut t, DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, DEVICE_FEATURES), 0);
        w(&mut t, QUEUE_SEL, 5);
        assert_eq!(r(&mut t, QUEUE_NUM_MAX), 0, "no such queue");
    }

    #[test]
    fn a_restored_transport_continues_with_its_queues_interrupts_and_device() {
        let (mut t, _, _) = setup();
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, STATUS, 15);
        t.interrupt.trigger(crate::virtio::INT_VRING).expect("irq");
        let st = t.state();
        assert_eq!(st.status, 15);
        assert_eq!(st.interrupt_status, crate::virtio::INT_VRING);
        assert_eq!(st.queues[0].0.desc_table, 0x1000);
        let json = serde_json::to_string(&st).expect("serialise");
        let st2: MmioTransportState = serde_json::from_str(&json).expect("parse");
        assert_eq!(st2, st);

        let (mut fresh, dev, kick) = setup();
        let irq = fresh.interrupt.irq.try_clone().expect("irq");
        fresh.restore(&st2).expect("restore");
        assert_eq!(
            fresh.state(),
            MmioTransportState {
                device: fresh.state().device,
                ..st.clone()
            }
        );
        assert_eq!(r(&mut fresh, STATUS), 15);
        assert_eq!(r(&mut fresh, INTERRUPT_STATUS), crate::virtio::INT_VRING);
        assert!(irq.read().is_ok(), "the pending interrupt is raised again");
        assert!(kick.read().is_ok(), "the queue is kicked");
        assert_eq!(
            dev.lock().expect("lock").restored.as_deref(),
            Some("Some((4294967808, 1))"),
            "the device got its own state"
        );
        // A state for a device with other queues is refused.
        let mut bad = st.clone();
        bad.queues.push(bad.queues[0].clone());
        let (mut other, _, _) = setup();
        assert!(other.restore(&bad).is_err());
        let mut bad = st;
        bad.queues[0].0.max_size = 256;
        assert!(other.restore(&bad).is_err());
    }

    #[test]
    fn full_negotiation_activates() {
        let (mut t, dev, _) = setup();
        negotiate(&mut t);
        assert_eq!(r(&mut t, STATUS), 11);
        setup_queue(&mut t);
        w(&mut t, STATUS, 15);
        assert_eq!(r(&mut t, STATUS), 15);
        assert_eq!(
            dev.lock().expect("lock").activated,
            Some(((1 << 32) | (1 << 9), 1))
        );
        // Queue setup after DRIVER_OK is ignored.
        w(&mut t, QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 16);
        // Reset clears everything and resets the device.
        w(&mut t, STATUS, 0);
        assert_eq!(r(&mut t, STATUS), 0);
        assert_eq!(dev.lock().expect("lock").resets, 1);
        assert!(dev.lock().expect("lock").activated.is_none());
        assert!(!t.queues[0].ready());
    }

    #[test]
    fn status_out_of_order_is_ignored() {
        let (mut t, dev, _) = setup();
        w(&mut t, STATUS, 4); // DRIVER_OK first
        assert_eq!(r(&mut t, STATUS), 0);
        w(&mut t, STATUS, 1);
        w(&mut t, STATUS, 9); // FEATURES_OK without DRIVER
        assert_eq!(r(&mut t, STATUS), 1);
        w(&mut t, STATUS, 3);
        w(&mut t, STATUS, 7); // DRIVER_OK before FEATURES_OK
        assert_eq!(r(&mut t, STATUS), 3);
        w(&mut t, STATUS, 2); // clearing ACKNOWLEDGE without reset
        assert_eq!(r(&mut t, STATUS), 3);
        assert!(dev.lock().expect("lock").activated.is_none());
    }

    #[test]
    fn features_without_version_1_or_unoffered_are_refused() {
        let (mut t, _, _) = setup();
        w(&mut t, STATUS, 1);
        w(&mut t, STATUS, 3);
        w(&mut t, DRIVER_FEATURES, 1 << 9); // no VERSION_1
        w(&mut t, STATUS, 11);
        assert_eq!(r(&mut t, STATUS) & 8, 0);
        w(&mut t, DRIVER_FEATURES_SEL, 1);
        w(&mut t, DRIVER_FEATURES, 1 | 2); // bit 33 not offered
        w(&mut t, STATUS, 11);
        assert_eq!(r(&mut t, STATUS) & 8, 0);
    }

    #[test]
    fn invalid_queue_at_driver_ok_needs_reset() {
        let (mut t, dev, _) = setup();
        negotiate(&mut t);
        // A queue never made ready cannot be activated.
        w(&mut t, STATUS, 15);
        assert_eq!(r(&mut t, STATUS), 11 | VIRTIO_CONFIG_S_NEEDS_RESET);
        assert!(dev.lock().expect("lock").activated.is_none());
        // Sizes that are not a power of two or exceed the maximum are not taken.
        w(&mut t, STATUS, 0);
        negotiate(&mut t);
        w(&mut t, QUEUE_NUM, 3);
        assert_eq!(t.queues[0].size(), 16);
        w(&mut t, QUEUE_NUM, 64);
        assert_eq!(t.queues[0].size(), 16);
        // Rings outside guest memory are unusable.
        w(&mut t, STATUS, 0);
        negotiate(&mut t);
        setup_queue(&mut t);
        w(&mut t, QUEUE_DESC_HIGH, 0x10);
        w(&mut t, STATUS, 15);
        assert_ne!(r(&mut t, STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_and_odd_accesses() {
        let (mut t, _, kick) = setup();
        let mut b = [0u8; 2];
        t.read(CONFIG + 2, &mut b);
        assert_eq!(b, [3, 4]);
        let mut past = [0xffu8; 4];
        t.read(CONFIG + 0x1000, &mut past);
        assert_eq!(past, [0; 4], "config reads past the end are zero");
        let mut narrow = [0xffu8; 2];
        t.read(MAGIC_VALUE, &mut narrow);
        assert_eq!(narrow, [0, 0], "registers are 32-bit only");
        t.write(STATUS, &[1]);
        assert_eq!(r(&mut t, STATUS), 0, "narrow status write ignored");
        w(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(kick.read().expect("kicked"), 1);
        w(&mut t, QUEUE_NOTIFY, 9); // no such queue: nothing happens
        assert!(kick.read().is_err());
        // A register this transport does not have (shared memory, 0x0c0): writes are
        // ignored, reads are zero.
        w(&mut t, 0x0c0, 7);
        assert_eq!(r(&mut t, 0x0c0), 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _, _) = setup();
        t.interrupt
            .trigger(super::super::INT_VRING)
            .expect("trigger");
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 1);
        w(&mut t, INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, INTERRUPT_STATUS), 0);
    }
}
