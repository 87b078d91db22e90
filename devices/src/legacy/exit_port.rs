//! Ember's guest exit device at I/O ports 0xf4-0xf5. A write to 0xf4 (the port QEMU's
//! `isa-debug-exit` uses by default) ends the VM, and its low byte becomes the exit status. A
//! write to 0xf5 powers the VM off: a machine without ACPI has no other way, and the project's
//! guest kernel uses it as its last-resort power-off handler. Reads return all ones.

use crate::bus::BusDevice;
use crate::{GuestExit, SharedExitSink};

/// The exit port.
pub struct ExitPort {
    sink: SharedExitSink,
}

impl ExitPort {
    /// An exit port reporting to `sink`.
    pub fn new(sink: SharedExitSink) -> Self {
        Self { sink }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&status)) => self.sink.guest_exit(GuestExit::Status(status)),
            (1, Some(_)) => self.sink.guest_exit(GuestExit::PowerOff),
            _ => {}
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
    fn a_write_reports_its_status() {
        let sink = Arc::new(Sink::default());
        let mut port = ExitPort::new(sink.clone());
        let mut b = [0u8];
        port.read(0, &mut b);
        assert_eq!(b, [0xff]);
        port.write(0, &[42]);
        port.write(0, &[7, 1]);
        port.write(1, &[9]);
        port.write(2, &[9]);
        port.write(1, &[]);
        assert_eq!(
            *sink.0.lock().expect("lock"),
            vec![
                GuestExit::Status(42),
                GuestExit::Status(7),
                GuestExit::PowerOff
            ]
        );
    }
}
