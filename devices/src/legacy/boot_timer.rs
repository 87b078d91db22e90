//! The boot-timer device (Firecracker-compatible): a guest writes the byte 123 at offset 0 of
//! this MMIO page (guest-physical 0xC000_0000) once it has booted, so one guest image measures
//! both VMMs. Ember records the time of the first such write. Reads return zero.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::bus::BusDevice;

/// The value a guest writes to signal that it booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// The boot-timer device.
pub struct BootTimer {
    signalled: Arc<OnceLock<Instant>>,
}

impl BootTimer {
    /// A device recording the first signal into `signalled`.
    pub fn new(signalled: Arc<OnceLock<Instant>>) -> Self {
        Self { signalled }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            let _ = self.signalled.set(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_counts() {
        let t = Arc::new(OnceLock::new());
        let mut dev = BootTimer::new(t.clone());
        dev.write(0, &[1]);
        dev.write(8, &[123]);
        assert!(t.get().is_none());
        dev.write(0, &[123]);
        let first = *t.get().expect("signalled");
        dev.write(0, &[123]);
        assert_eq!(
            *t.get().expect("signalled"),
            first,
            "the first signal is kept"
        );
    }
}
