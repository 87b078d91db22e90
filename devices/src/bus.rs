//! The I/O bus: every guest port-I/O or MMIO access goes through a [`Bus`], which finds the
//! device whose address range holds the address and hands it the offset within that range.
//!
//! The bus is filled during VM build and then shared read-only (`Arc<Bus>`) by the vCPU
//! threads; only the devices carry a lock. An access no device claims is ignored (reads see
//! all ones, as on a PC where nothing drives the bus).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a [`Bus`].
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting into a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("Bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("Bus range {base:#x}+{len:#x} is invalid")]
    InvalidRange {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Address ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// Maps `device` at `[base, base + len)`. Overlapping ranges are rejected.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((b, e)) = self.devices.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device holding `addr` and the offset of `addr` in it. An access must lie wholly
    /// inside one device's range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= entry.len).then_some((&entry.device, offset))
    }

    /// Routes a read. Returns false, leaving `data` untouched, when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                // A device whose lock was poisoned by a panicking thread still serves: its
                // state is plain register data.
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write. Returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
                d.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn offsets_are_relative_to_base() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).expect("free range");
        assert!(bus.write(0x3fb, &[0x80]));
        assert_eq!(dev.lock().expect("lock").writes, vec![(3, vec![0x80])]);
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
    }

    #[test]
    fn overlap_and_bad_ranges_are_rejected() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).expect("free range");
        assert!(bus.insert(dev.clone(), 0x3ff, 1).is_err());
        assert!(bus.insert(dev.clone(), 0x3f0, 9).is_err());
        assert!(bus.insert(dev.clone(), 0x3f0, 8).is_ok());
        assert!(bus.insert(dev.clone(), 0x400, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_ignored() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x1000, 0x10).expect("free range");
        assert!(!bus.write(0xfff, &[1]));
        assert!(!bus.write(0x100e, &[1, 2, 3, 4]));
        assert!(!bus.write(0x1010, &[1]));
        let mut b = [0xffu8; 4];
        assert!(!bus.read(u64::MAX, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(dev.lock().expect("lock").writes.is_empty());
    }
}
