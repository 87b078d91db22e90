//! The i8042 PS/2 controller, reduced to what a VM needs (as in Firecracker):
//! - the CPU reset line: command `0xFE` on port 0x64, which Linux uses with `reboot=k`;
//! - a keyboard that can type Ctrl+Alt+Del (scan code set 2), which is how a VMM without
//!   ACPI asks a guest to shut down: Linux's keyboard driver turns it into SIGINT to init.
//!
//! Written here rather than with vm-superio's `I8042Device`, which models only the reset line.
//! Ports 0x60 (data) and 0x64 (status/command) map to offsets 0 and 4. Not supported: the
//! auxiliary (mouse) port, keyboard LEDs and typematic settings (acknowledged and ignored).

use std::collections::VecDeque;

use log::{debug, warn};

use crate::bus::BusDevice;
use crate::{EventFdTrigger, GuestExit, SharedExitSink};

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_RESET_CPU: u8 = 0xfe;

const CTR_KBD_INT: u8 = 0x01;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;

/// Scan code set 2 for Ctrl (down, up), Alt and Delete.
const CTRL_ALT_DEL: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

const BUF_MAX: usize = 64;

/// The i8042's state as plain data (for snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Controller configuration ("command byte").
    pub control: u8,
    /// Output port.
    pub outp: u8,
    /// A command waiting for its data byte.
    pub cmd: u8,
    /// Bytes waiting to be read at port 0x60.
    pub buf: Vec<u8>,
    /// Whether a guest driver has used the controller.
    pub driver_seen: bool,
}

/// The i8042 controller on the I/O bus.
pub struct I8042 {
    exit: SharedExitSink,
    kbd_irq: Option<EventFdTrigger>,
    status: u8,
    control: u8,
    outp: u8,
    cmd: u8,
    buf: VecDeque<u8>,
    /// Whether a driver has written to the controller: until one has, nobody would read keys.
    driver_seen: bool,
}

impl I8042 {
    /// A controller whose reset line reports to `exit` and whose keyboard interrupt (IRQ 1)
    /// is `kbd_irq`.
    pub fn new(exit: SharedExitSink, kbd_irq: Option<EventFdTrigger>) -> Self {
        Self {
            exit,
            kbd_irq,
            status: SB_KBD_ENABLED,
            control: CTR_KBD_INT,
            outp: 0,
            cmd: 0,
            buf: VecDeque::with_capacity(BUF_MAX),
            driver_seen: false,
        }
    }

    /// The state, as plain data.
    pub fn state(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            cmd: self.cmd,
            buf: self.buf.iter().copied().collect(),
            driver_seen: self.driver_seen,
        }
    }

    /// A controller in `state` (the buffer cut to its bound), wired like [`Self::new`].
    pub fn from_state(
        state: &I8042State,
        exit: SharedExitSink,
        kbd_irq: Option<EventFdTrigger>,
    ) -> Self {
        let mut d = Self::new(exit, kbd_irq);
        d.status = state.status;
        d.control = state.control;
        d.outp = state.outp;
        d.cmd = state.cmd;
        d.buf = state.buf.iter().copied().take(BUF_MAX).collect();
        d.driver_seen = state.driver_seen;
        d
    }

    fn push(&mut self, byte: u8) {
        if self.buf.len() < BUF_MAX {
            self.buf.push_back(byte);
            self.status |= SB_OUT_DATA_AVAIL;
        }
    }

    fn interrupt(&self) {
        if self.control & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                if let Err(e) = irq.0.write(1) {
                    warn!("i8042: cannot raise the keyboard interrupt: {e}");
                }
            }
        }
    }

    /// Types Ctrl+Alt+Del on the keyboard. Returns false if no guest driver has used the
    /// controller yet (nobody would read the keys) or the buffer had no room.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if !self.driver_seen || self.buf.len() + CTRL_ALT_DEL.len() > BUF_MAX {
            return false;
        }
        for &b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.interrupt();
        true
    }

    fn pop(&mut self) -> u8 {
        let b = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            // More bytes pending: another interrupt, as a real controller does per byte.
            self.interrupt();
        }
        b
    }

    fn command(&mut self, cmd: u8) {
        self.driver_seen = true;
        self.status |= SB_I8042_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.cmd = cmd,
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.status &= !SB_KBD_ENABLED,
            CMD_KBD_ENABLE => self.status |= SB_KBD_ENABLED,
            CMD_RESET_CPU => self.exit.guest_exit(GuestExit::Reset),
            other => debug!("i8042: ignored command {other:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.driver_seen = true;
        self.status &= !SB_I8042_CMD_DATA;
        match std::mem::take(&mut self.cmd) {
            CMD_WRITE_CTR => self.control = value,
            CMD_WRITE_OUTP => self.outp = value,
            _ => {
                // A command to the keyboard itself: acknowledge; a reset also reports success.
                self.push(KBD_ACK);
                if value == 0xff {
                    self.push(KBD_RESET_OK);
                }
                self.interrupt();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => self.pop(),
            COMMAND => self.status,
            _ => 0,
        };
        // Registers are one byte wide: a wider access reads zeros above it.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            DATA => self.data(v),
            COMMAND => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitSink;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Sink(Mutex<Vec<GuestExit>>);
    impl ExitSink for Sink {
        fn guest_exit(&self, exit: GuestExit) {
            self.0.lock().expect("lock").push(exit);
        }
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn only_the_reset_command_resets() {
        let sink = Arc::new(Sink::default());
        let mut dev = I8042::new(sink.clone(), None);
        dev.write(DATA, &[0xfe]); // to the keyboard: not a reset
        dev.write(COMMAND, &[0xaa]);
        assert!(sink.0.lock().expect("lock").is_empty());
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(*sink.0.lock().expect("lock"), vec![GuestExit::Reset]);
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_an_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(
            Arc::new(Sink::default()),
            Some(EventFdTrigger(irq.try_clone().expect("clone"))),
        );
        assert_eq!(read(&mut dev, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        assert!(
            !dev.send_ctrl_alt_del(),
            "no driver has used the controller: nobody would read the keys"
        );
        assert!(irq.read().is_err(), "no interrupt without a driver");
        dev.write(COMMAND, &[CMD_KBD_ENABLE]);
        assert!(dev.send_ctrl_alt_del());
        assert!(irq.read().is_ok());
        let mut got = vec![];
        while read(&mut dev, COMMAND) & SB_OUT_DATA_AVAIL != 0 {
            got.push(read(&mut dev, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn state_round_trips_and_the_buffer_stays_bounded() {
        let mut dev = I8042::new(Arc::new(Sink::default()), None);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x47]);
        dev.write(DATA, &[0xff]); // keyboard reset: ACK and 0xAA queued
        let st = dev.state();
        assert_eq!(st.buf, vec![KBD_ACK, KBD_RESET_OK]);
        let mut back = I8042::from_state(&st, Arc::new(Sink::default()), None);
        assert_eq!(back.state(), st);
        assert_eq!(
            (read(&mut back, DATA), read(&mut back, DATA)),
            (KBD_ACK, KBD_RESET_OK)
        );
        assert!(
            back.send_ctrl_alt_del(),
            "the driver was seen before the snapshot"
        );
        let mut huge = st.clone();
        huge.buf = vec![0; 1000];
        assert_eq!(
            I8042::from_state(&huge, Arc::new(Sink::default()), None)
                .buf
                .len(),
            BUF_MAX
        );
    }

    #[test]
    fn controller_commands() {
        let mut dev = I8042::new(Arc::new(Sink::default()), None);
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA), 0x55);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x45]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA), 0x45);
        dev.write(DATA, &[0xff]); // keyboard reset
        assert_eq!(
            (read(&mut dev, DATA), read(&mut dev, DATA)),
            (KBD_ACK, KBD_RESET_OK)
        );
        for _ in 0..100 {
            dev.write(DATA, &[0xed]); // flood the buffer: bounded
        }
        assert!(dev.buf.len() <= BUF_MAX);
        assert!(!dev.send_ctrl_alt_del(), "no room");
    }
}
