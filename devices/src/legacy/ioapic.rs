//! The I/O APIC, emulated in user space: with KVM's split irqchip only the local APICs live in
//! the kernel. The guest programs one redirection entry per pin; every unmasked entry becomes
//! an MSI route for that pin's GSI, handed to an [`MsiRouter`] (the `vmm` crate turns them into
//! `KVM_SET_GSI_ROUTING`). Devices raise their pins through irqfds on those GSIs, so an
//! interrupt reaches a vCPU with no userspace exit and no thread in between; this device only
//! sees the guest's (rare) register accesses.
//!
//! Ember's devices signal edges through irqfds and the MP table declares every pin an ISA (edge)
//! interrupt. An entry the guest programs as level-triggered is delivered as a level MSI, so
//! the local APIC's TMR agrees with the entry (Linux otherwise "repairs" each such interrupt
//! with four register writes) and its EOI ends in a `KVM_EXIT_IOAPIC_EOI` the vCPU loop ignores:
//! the line is a pulse, so there is no remote IRR to clear. An edge on a masked pin is lost, as
//! on real hardware and KVM's in-kernel IOAPIC. The reserved delivery modes (3 and 6, which as
//! an MSI would mean a startup IPI) deliver nothing.
//!
//! Why not KVM's in-kernel IOAPIC: destroying a VM with the full in-kernel irqchip (PIC, IOAPIC)
//! and PIT took 15-23 ms of SRCU grace periods on the hosts Ember was measured on, against
//! 0.2 ms for a split irqchip: most of a small VM's life. QEMU's microvm makes the same choice.

use crate::bus::BusDevice;

/// Pins (and redirection entries) of the I/O APIC: GSIs 0 to 23.
pub const IOAPIC_PINS: usize = 24;

/// IOREGSEL: selects the indirect register.
const IOREGSEL: u64 = 0x00;
/// IOWIN: the selected register's value.
const IOWIN: u64 = 0x10;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION: u32 = 0x10;
/// Version 0x11 (the 82093AA, no EOI register, as KVM's own) with 24 entries.
const VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);

const RTE_MASKED: u64 = 1 << 16;
/// Delivery status (12) and remote IRR (14) are read-only; neither is ever set here.
const RTE_READ_ONLY: u64 = (1 << 12) | (1 << 14);
/// Writable bits: vector, delivery mode, destination mode, polarity, trigger, mask (low
/// dword) and the 8-bit destination (bits 56-63).
const RTE_WRITABLE: u64 = (0x1_ffff & !RTE_READ_ONLY) | (0xff << 56);

/// One MSI: the address and data a pin's interrupt is delivered as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (0xFEE0_0000 | destination << 12 | ...).
    pub address: u64,
    /// Data (vector and delivery mode).
    pub data: u32,
}

/// The routes of all pins: `None` for a masked pin.
pub type PinRoutes = [Option<MsiMessage>; IOAPIC_PINS];

/// Where the I/O APIC installs its routes. The `vmm` crate implements it with
/// `KVM_SET_GSI_ROUTING`, GSI = pin.
pub trait MsiRouter: Send {
    /// Replaces every pin's route.
    fn set_routes(&mut self, routes: &PinRoutes) -> std::io::Result<()>;
}

/// The I/O APIC's state as plain data (for snapshots): its ID, the selected register and the
/// 24 redirection entries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoapicState {
    /// APIC ID.
    pub id: u32,
    /// IOREGSEL.
    pub select: u32,
    /// Redirection entries, one per pin.
    pub entries: Vec<u64>,
}

/// The I/O APIC.
pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; IOAPIC_PINS],
    installed: PinRoutes,
    router: Box<dyn MsiRouter>,
    router_failed: bool,
}

impl Ioapic {
    /// An I/O APIC with APIC ID `id`, every pin masked, installing routes through `router`.
    pub fn new(id: u8, router: Box<dyn MsiRouter>) -> Self {
        Self {
            id: u32::from(id),
            select: 0,
            entries: [RTE_MASKED; IOAPIC_PINS],
            installed: [None; IOAPIC_PINS],
            router,
            router_failed: false,
        }
    }

    /// The state, as plain data.
    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            select: self.select,
            entries: self.entries.to_vec(),
        }
    }

    /// An I/O APIC in `state`, its routes installed through `router` at once (a restored
    /// guest's interrupts are delivered before it writes a register again). Entries past the
    /// 24 pins are ignored, read-only bits cleared.
    pub fn from_state(state: &IoapicState, router: Box<dyn MsiRouter>) -> Self {
        let mut d = Self::new(0, router);
        d.id = state.id & 0xff;
        d.select = state.select & 0xff;
        for (e, s) in d.entries.iter_mut().zip(&state.entries) {
            *e = s & RTE_WRITABLE;
        }
        d.installed = [Some(MsiMessage::default()); IOAPIC_PINS]; // differs: force an install
        d.update_routes();
        d
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => (self.id & 0xff) << 24,
            REG_VERSION => VERSION,
            r if r >= REG_REDIRECTION => match self.entry_of(r) {
                Some((pin, high)) => {
                    let e = self.entries[pin];
                    if high {
                        (e >> 32) as u32
                    } else {
                        e as u32
                    }
                }
                None => 0,
            },
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.select {
            REG_ID => self.id = (value >> 24) & 0xff,
            r if r >= REG_REDIRECTION => {
                if let Some((pin, high)) = self.entry_of(r) {
                    let old = self.entries[pin];
                    let new = if high {
                        (old & 0xffff_ffff) | (u64::from(value) << 32)
                    } else {
                        (old & !0xffff_ffff) | u64::from(value)
                    };
                    self.entries[pin] = new & RTE_WRITABLE;
                    self.update_routes();
                }
            }
            _ => {}
        }
    }

    /// The pin and half (`true` = high dword) of indirect register `r`.
    fn entry_of(&self, r: u32) -> Option<(usize, bool)> {
        let i = usize::try_from(r - REG_REDIRECTION).ok()?;
        (i / 2 < IOAPIC_PINS).then_some((i / 2, i % 2 == 1))
    }

    /// Installs the routes if they changed (a guest rewriting an entry with the same route
    /// costs no ioctl). A failure is logged once: the guest can repeat it at will.
    fn update_routes(&mut self) {
        let routes: PinRoutes = std::array::from_fn(|pin| route(self.entries[pin]));
        if routes == self.installed {
            return;
        }
        match self.router.set_routes(&routes) {
            Ok(()) => self.installed = routes,
            Err(e) if !self.router_failed => {
                self.router_failed = true;
                log::error!("ioapic: cannot install interrupt routes: {e}");
            }
            Err(_) => {}
        }
    }
}

/// The MSI a redirection entry delivers, `None` when masked or its delivery mode is reserved.
fn route(entry: u64) -> Option<MsiMessage> {
    let delivery_mode = ((entry >> 8) & 0x7) as u32;
    if entry & RTE_MASKED != 0 || delivery_mode == 3 || delivery_mode == 6 {
        return None;
    }
    let vector = (entry & 0xff) as u32;
    let level = ((entry >> 15) & 1) as u32;
    let logical = (entry >> 11) & 1;
    let dest = (entry >> 56) & 0xff;
    // Lowest-priority delivery sets the redirection hint, as the MSI format defines it.
    let hint = u64::from(delivery_mode == 1);
    Some(MsiMessage {
        address: 0xfee0_0000 | (dest << 12) | (hint << 3) | (logical << 2),
        // Trigger mode (bit 15) and, for level, the asserted level (bit 14).
        data: vector | (delivery_mode << 8) | (level << 14) | (level << 15),
    })
}

fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_register(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = le_value(data);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => self.write_register(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Routes(Arc<Mutex<Vec<PinRoutes>>>);
    impl MsiRouter for Routes {
        fn set_routes(&mut self, routes: &PinRoutes) -> std::io::Result<()> {
            self.0.lock().expect("lock").push(*routes);
            Ok(())
        }
    }

    fn ioapic() -> (Ioapic, Routes) {
        let r = Routes::default();
        (Ioapic::new(1, Box::new(r.clone())), r)
    }

    fn write_reg(io: &mut Ioapic, reg: u32, value: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn a_restored_ioapic_installs_its_routes_at_once() {
        let (mut io, _) = ioapic();
        write_reg(&mut io, REG_REDIRECTION + 9, 3 << 24);
        write_reg(&mut io, REG_REDIRECTION + 8, 0x31);
        let st = io.state();
        let routes = Routes::default();
        let mut back = Ioapic::from_state(&st, Box::new(routes.clone()));
        assert_eq!(back.state(), st);
        let installed = routes.0.lock().expect("lock").clone();
        assert_eq!(installed.len(), 1, "one install, at restore");
        assert_eq!(installed[0][4], route(st.entries[4]));
        assert!(installed[0][4].is_some());
        assert_eq!(read_reg(&mut back, REG_ID), 1 << 24);
        // Read-only bits and extra entries from a tampered state are dropped.
        let mut bad = st.clone();
        bad.entries = vec![u64::MAX; 40];
        let back = Ioapic::from_state(&bad, Box::new(Routes::default()));
        assert!(back.state().entries.iter().all(|e| e & RTE_READ_ONLY == 0));
        assert_eq!(back.state().entries.len(), IOAPIC_PINS);
    }

    #[test]
    fn identification_registers() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, REG_ID), 1 << 24);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        write_reg(&mut io, REG_ID, 5 << 24);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 5 << 24);
        let mut b = [0u8; 4];
        io.read(IOREGSEL, &mut b);
        assert_eq!(u32::from_le_bytes(b), REG_ARBITRATION);
    }

    #[test]
    fn pins_start_masked_and_unmasking_installs_a_route() {
        let (mut io, routes) = ioapic();
        for pin in 0..IOAPIC_PINS as u32 {
            assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2 * pin), 1 << 16);
        }
        // Pin 4: destination APIC 3 (physical), fixed delivery, vector 0x31, unmasked.
        write_reg(&mut io, REG_REDIRECTION + 9, 3 << 24);
        assert!(routes.0.lock().expect("lock").is_empty(), "still masked");
        write_reg(&mut io, REG_REDIRECTION + 8, 0x31);
        let installed = routes.0.lock().expect("lock").clone();
        assert_eq!(installed.len(), 1);
        assert_eq!(
            installed[0][4],
            Some(MsiMessage {
                address: 0xfee0_3000,
                data: 0x31
            })
        );
        assert!(installed[0]
            .iter()
            .enumerate()
            .all(|(p, r)| p == 4 || r.is_none()));
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 8), 0x31);
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 9), 3 << 24);
    }

    #[test]
    fn logical_lowest_priority_and_masking() {
        let (mut io, routes) = ioapic();
        // Pin 23: logical destination 0x0f, lowest priority, vector 0x40.
        write_reg(&mut io, REG_REDIRECTION + 47, 0x0f << 24);
        write_reg(&mut io, REG_REDIRECTION + 46, 0x40 | (1 << 8) | (1 << 11));
        let last = *routes.0.lock().expect("lock").last().expect("route");
        assert_eq!(
            last[23],
            Some(MsiMessage {
                address: 0xfee0_f000 | (1 << 3) | (1 << 2),
                data: 0x140
            })
        );
        write_reg(&mut io, REG_REDIRECTION + 46, 0x40 | (1 << 16));
        let last = *routes.0.lock().expect("lock").last().expect("route");
        assert_eq!(last[23], None, "masked again");
    }

    #[test]
    fn rewriting_the_same_route_costs_nothing() {
        let (mut io, routes) = ioapic();
        write_reg(&mut io, REG_REDIRECTION + 2, 0x30);
        write_reg(&mut io, REG_REDIRECTION + 2, 0x30);
        write_reg(&mut io, REG_REDIRECTION + 3, 0);
        assert_eq!(routes.0.lock().expect("lock").len(), 1);
    }

    #[test]
    fn level_entries_deliver_level_msis() {
        let (mut io, routes) = ioapic();
        write_reg(&mut io, REG_REDIRECTION + 2, 0x30 | (1 << 15));
        let last = *routes.0.lock().expect("lock").last().expect("route");
        assert_eq!(
            last[1],
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x30 | (1 << 14) | (1 << 15)
            })
        );
    }

    #[test]
    fn reserved_delivery_modes_deliver_nothing() {
        let (mut io, routes) = ioapic();
        for mode in [3u32, 6] {
            write_reg(&mut io, REG_REDIRECTION + 4, 0x30 | (mode << 8));
            assert_eq!(read_reg(&mut io, REG_REDIRECTION + 4), 0x30 | (mode << 8));
        }
        assert!(routes.0.lock().expect("lock").is_empty(), "never routed");
        write_reg(&mut io, REG_REDIRECTION + 4, 0x30 | (4 << 8));
        let last = *routes.0.lock().expect("lock").last().expect("route");
        assert_eq!(last[2].map(|m| m.data), Some(0x430), "NMI is a valid mode");
    }

    #[test]
    fn read_only_bits_and_out_of_range_registers() {
        let (mut io, routes) = ioapic();
        write_reg(
            &mut io,
            REG_REDIRECTION,
            0x30 | (1 << 12) | (1 << 14) | (1 << 16),
        );
        assert_eq!(read_reg(&mut io, REG_REDIRECTION), 0x30 | (1 << 16));
        // Past the last entry, and the unused registers 3..0x0f: reads 0, writes ignored.
        for reg in [REG_REDIRECTION + 48, 0xff, 0x03, 0x0f] {
            write_reg(&mut io, reg, 0xffff_ffff);
            assert_eq!(read_reg(&mut io, reg), 0);
        }
        assert!(routes.0.lock().expect("lock").is_empty());
        // Accesses outside IOREGSEL/IOWIN, and short ones, do not panic.
        io.write(0x40, &[1, 2, 3, 4]);
        io.write(IOREGSEL, &[0x10]);
        let mut b = [0u8; 8];
        io.read(IOWIN, &mut b);
        assert_eq!(
            b,
            [0x30, 0, 1, 0, 0, 0, 0, 0],
            "RTE 0 low dword, zero-extended"
        );
    }

    #[test]
    fn a_failing_router_is_retried_on_the_next_change() {
        // (and logged only once; each retry is one ioctl per guest write, as any write)
        struct Failing(Arc<Mutex<u32>>);
        impl MsiRouter for Failing {
            fn set_routes(&mut self, _: &PinRoutes) -> std::io::Result<()> {
                *self.0.lock().expect("lock") += 1;
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
        let calls = Arc::new(Mutex::new(0));
        let mut io = Ioapic::new(0, Box::new(Failing(calls.clone())));
        write_reg(&mut io, REG_REDIRECTION, 0x30);
        write_reg(&mut io, REG_REDIRECTION, 0x30);
        assert_eq!(*calls.lock().expect("lock"), 2);
    }
}
