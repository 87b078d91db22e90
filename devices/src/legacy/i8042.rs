//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset line (command
//! `0xFE` on port 0x64, which Linux uses with `reboot=k`). Built on vm-superio's
//! `I8042Device`; ports 0x60 (data) and 0x64 (command) map to offsets 0 and 4.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::{GuestExit, SharedExitSink};

/// Raises [`GuestExit::Reset`] when vm-superio's controller pulls the reset line.
pub struct ResetLine(SharedExitSink);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.guest_exit(GuestExit::Reset);
        Ok(())
    }
}

/// The i8042 controller on the I/O bus.
pub struct I8042 {
    inner: I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset line reports to `sink`.
    pub fn new(sink: SharedExitSink) -> Self {
        Self {
            inner: I8042Device::new(ResetLine(sink)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // The trigger cannot fail.
            let _ = self.inner.write(off, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitSink;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Sink(Mutex<Vec<GuestExit>>);
    impl ExitSink for Sink {
        fn guest_exit(&self, exit: GuestExit) {
            self.0.lock().expect("lock").push(exit);
        }
    }

    #[test]
    fn only_the_reset_command_resets() {
        let sink = Arc::new(Sink::default());
        let mut dev = I8042::new(sink.clone());
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xaa]);
        assert!(sink.0.lock().expect("lock").is_empty());
        dev.write(4, &[0xfe]);
        assert_eq!(*sink.0.lock().expect("lock"), vec![GuestExit::Reset]);
    }
}
