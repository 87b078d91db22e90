//! Ember's guest exit device at I/O port 0xf4 (the port QEMU's `isa-debug-exit` uses by
//! default): a one-byte write ends the VM, and that byte becomes its exit status. Reads return
//! all ones. Wider writes use their low byte.

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
        if offset == 0 {
            if let Some(&status) = data.first() {
                self.sink.guest_exit(GuestExit::Status(status));
            }
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
        assert_eq!(
            *sink.0.lock().expect("lock"),
            vec![GuestExit::Status(42), GuestExit::Status(7)]
        );
    }
}
