//! 16550A UART (COM1 at 0x3f8, IRQ 4) on vm-superio's `Serial`: guest output goes to any
//! `Write`, host input is fed from a file descriptor by [`SerialInput`], an event-manager
//! subscriber. The 64-byte receive FIFO is refilled when the guest drains it, so a fast
//! producer never loses input. No modem lines, no FIFO trigger levels.
//!
//! Transmit back-pressure (added here: vm-superio's transmitter is always empty and raises
//! its THR-empty interrupt even when the byte could not be written): with an output
//! [`ConsoleBuffer`], a byte written while the buffer is full waits in a 16-byte transmit
//! FIFO, the line status shows the transmitter busy (no THRE, no TEMT) and no THR-empty
//! interrupt comes until the event loop has made room and called [`Serial::flush_held`]. A
//! driver (Linux's 8250: polling for the console, interrupt-driven for the tty) waits, as on
//! real hardware; bytes written past the FIFO are dropped and counted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::legacy::ConsoleBuffer;
use crate::EventFdTrigger;

const REG_DATA: u8 = 0;
const REG_LCR: u8 = 3;
const REG_MCR: u8 = 4;
const REG_LSR: u8 = 5;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
/// The 16550A's transmit FIFO.
const TX_FIFO: usize = 16;

/// Tells the input side that the guest emptied the receive FIFO.
pub struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            warn!("serial: cannot signal drained input: {e}");
        }
    }
}

/// vm-superio's UART registers, mirrored for serde (vm-superio's `SerialState` has no serde).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(remote = "vm_superio::serial::SerialState")]
struct UartRegisters {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// The UART's state as plain data (for snapshots): its registers and receive FIFO, and the
/// bytes its transmitter holds back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    /// Registers and the receive FIFO.
    #[serde(with = "UartRegisters")]
    pub uart: vm_superio::serial::SerialState,
    /// Transmit bytes waiting for room in the output buffer.
    pub held: Vec<u8>,
    /// Line control (DLAB).
    pub lcr: u8,
    /// Modem control (loopback).
    pub mcr: u8,
}

/// The UART on the I/O bus. `W` receives the guest's output.
pub struct Serial<W: Write + Send> {
    inner: vm_superio::Serial<EventFdTrigger, InputDrained, W>,
    /// With back-pressure: the buffer `W` writes into, and what waits for room in it.
    output: Option<Arc<ConsoleBuffer>>,
    held: VecDeque<u8>,
    /// Bytes dropped because the transmit FIFO was full too.
    dropped: u64,
    lcr: u8,
    mcr: u8,
}

impl<W: Write + Send> Serial<W> {
    /// A UART raising its interrupt on `irq` and writing guest output to `out`. Returns the
    /// eventfd that fires when the guest drains the input FIFO (for [`SerialInput`]).
    pub fn new(irq: EventFdTrigger, out: W) -> std::io::Result<(Self, EventFd)> {
        let drained = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let events = InputDrained(drained.try_clone()?);
        Ok((
            Self {
                inner: vm_superio::Serial::with_events(irq, events, out),
                output: None,
                held: VecDeque::with_capacity(TX_FIFO),
                dropped: 0,
                lcr: 0,
                mcr: 0,
            },
            drained,
        ))
    }

    /// The state, as plain data.
    pub fn state(&self) -> SerialDeviceState {
        SerialDeviceState {
            uart: self.inner.state(),
            held: self.held.iter().copied().collect(),
            lcr: self.lcr,
            mcr: self.mcr,
        }
    }

    /// A UART in `state`, wired like [`Self::new`]; pending interrupts are raised again. Fails
    /// on a receive FIFO larger than the UART's.
    pub fn from_state(
        state: &SerialDeviceState,
        irq: EventFdTrigger,
        out: W,
    ) -> std::io::Result<(Self, EventFd)> {
        let drained = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let events = InputDrained(drained.try_clone()?);
        let inner = vm_superio::Serial::from_state(&state.uart, irq, events, out)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok((
            Self {
                inner,
                output: None,
                held: state.held.iter().copied().take(TX_FIFO).collect(),
                dropped: 0,
                lcr: state.lcr,
                mcr: state.mcr,
            },
            drained,
        ))
    }

    /// Transmit back-pressure from `buffer`, the buffer `W` writes into (see the module doc).
    pub fn with_output_buffer(mut self, buffer: Arc<ConsoleBuffer>) -> Self {
        self.output = Some(buffer);
        self
    }

    /// Moves bytes that waited for room into the output buffer; the last one out raises the
    /// THR-empty interrupt the driver is waiting for. Called when the buffer was drained.
    pub fn flush_held(&mut self) {
        let Some(out) = self.output.clone() else {
            return;
        };
        while out.room() > 0 {
            let Some(b) = self.held.pop_front() else {
                break;
            };
            if let Err(e) = self.inner.write(REG_DATA, b) {
                log::debug!("serial: held byte: {e}");
            }
        }
    }

    /// Guest output bytes dropped because both the buffer and the transmit FIFO were full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether a write to `off` is a byte for the transmitter that must wait for room.
    fn must_hold(&self, off: u8) -> bool {
        off == REG_DATA
            && self.lcr & LCR_DLAB == 0
            && self.mcr & MCR_LOOP == 0
            && self
                .output
                .as_ref()
                .is_some_and(|o| !self.held.is_empty() || o.room() == 0)
    }

    /// Feeds up to the FIFO's free space of `input` to the guest; returns how much was taken.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if self.inner.fifo_capacity() == 0 {
            return 0;
        }
        self.inner.enqueue_raw_bytes(input).unwrap_or_else(|e| {
            warn!("serial: cannot queue input: {e}");
            0
        })
    }

    /// The output writer.
    pub fn writer(&self) -> &W {
        self.inner.writer()
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are one byte wide: a wider access reads zeros above it.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.read(off);
            if off == REG_LSR && !self.held.is_empty() {
                *b &= !(LSR_THRE | LSR_TEMT);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            match off {
                REG_LCR => self.lcr = b,
                REG_MCR => self.mcr = b,
                _ => {}
            }
            if self.must_hold(off) {
                if self.held.len() < TX_FIFO {
                    self.held.push_back(b);
                } else {
                    self.dropped += 1;
                }
                return;
            }
            if let Err(e) = self.inner.write(off, b) {
                // A failing output sink loses the byte, not the VM.
                log::debug!("serial: write at offset {off}: {e}");
            }
        }
    }
}

/// Anything that takes console input: the UART.
pub trait ConsoleInputSink: Send {
    /// Queues as much of `input` as fits; returns the count taken.
    fn enqueue_input(&mut self, input: &[u8]) -> usize;
}

impl<W: Write + Send> ConsoleInputSink for Serial<W> {
    fn enqueue_input(&mut self, input: &[u8]) -> usize {
        Serial::enqueue_input(self, input)
    }
}

/// Event-manager subscriber moving bytes from an input file descriptor (a terminal, a pipe)
/// into the UART's receive FIFO, pausing while the FIFO is full.
pub struct SerialInput {
    serial: Arc<Mutex<dyn ConsoleInputSink>>,
    input: File,
    drained: EventFd,
    pending: VecDeque<u8>,
    watching_input: bool,
}

impl SerialInput {
    const INPUT: u32 = 0;
    const DRAINED: u32 = 1;
    const READ_CHUNK: usize = 64;

    /// Feeds `input` to `serial`; `drained` is the eventfd returned by [`Serial::new`].
    pub fn new(serial: Arc<Mutex<dyn ConsoleInputSink>>, input: File, drained: EventFd) -> Self {
        Self {
            serial,
            input,
            drained,
            pending: VecDeque::new(),
            watching_input: false,
        }
    }

    /// Types `bytes` first, before anything read from the input (a restored guest's command).
    pub fn with_prefix(mut self, bytes: &[u8]) -> Self {
        self.pending.extend(bytes);
        self
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut s = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let (a, _) = self.pending.as_slices();
        let taken = s.enqueue_input(a);
        self.pending.drain(..taken);
    }

    fn set_input_watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_input {
            return;
        }
        let ev = Events::with_data(&self.input, Self::INPUT, EventSet::IN);
        let res = if on { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.watching_input = on,
            // Regular files and /dev/null cannot be polled: such input is ignored.
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                log::debug!("serial: console input cannot be polled; ignoring it");
            }
            Err(e) => error!("serial: cannot change input watch: {e:?}"),
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; Self::READ_CHUNK];
        match self.input.read(&mut buf) {
            Ok(0) => {
                // End of input: stop watching it, the VM keeps running.
                self.set_input_watch(ops, false);
            }
            Ok(n) => {
                self.pending.extend(&buf[..n]);
                self.flush_pending();
                if !self.pending.is_empty() {
                    self.set_input_watch(ops, false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("serial: console input failed, no more input: {e}");
                self.set_input_watch(ops, false);
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        self.flush_pending();
        if self.pending.is_empty() {
            self.set_input_watch(ops, true);
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.drained,
            Self::DRAINED,
            EventSet::IN,
        )) {
            error!("serial: cannot watch the receive FIFO: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            Self::INPUT => {
                if events.event_set().intersects(EventSet::IN) {
                    self.read_input(ops);
                } else {
                    // Hang-up or error with nothing to read.
                    self.set_input_watch(ops, false);
                }
            }
            Self::DRAINED => {
                let _ = self.drained.read();
                self.flush_pending();
                if self.pending.is_empty() {
                    self.set_input_watch(ops, true);
                }
            }
            other => {
                warn!("serial: unexpected event {other}");
                let _ = ops.remove(events);
            }
        }
    }
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SerialInput(fd {})", self.input.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_raises_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let out = Shared::default();
        let (mut s, _drained) =
            Serial::new(EventFdTrigger(irq.try_clone().expect("clone")), out.clone())
                .expect("serial");
        s.write(IER, &[0x2]); // THR-empty interrupt on
        for b in b"hi\n" {
            s.write(THR, &[*b]);
        }
        assert_eq!(&*out.0.lock().expect("lock"), b"hi\n");
        assert!(irq.read().expect("irq raised") >= 1);
    }

    /// The writer a UART with back-pressure gets: straight into the buffer.
    struct IntoBuffer(Arc<ConsoleBuffer>);
    impl Write for IntoBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(self.0.push(buf))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_output_buffer_shows_a_busy_transmitter_until_drained() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let buf = Arc::new(ConsoleBuffer::new(4).expect("buffer"));
        let (s, _) = Serial::new(
            EventFdTrigger(irq.try_clone().expect("clone")),
            IntoBuffer(buf.clone()),
        )
        .expect("serial");
        let mut s = s.with_output_buffer(buf.clone());
        let lsr = |s: &mut Serial<IntoBuffer>| {
            let mut b = [0u8];
            s.read(LSR, &mut b);
            b[0]
        };
        s.write(IER, &[0x2]);
        let _ = irq.read();
        for b in b"abcd" {
            s.write(THR, &[*b]);
        }
        assert_eq!(buf.room(), 0);
        assert_eq!(
            lsr(&mut s) & 0x60,
            0x60,
            "the last byte fitted: transmitter empty"
        );
        let _ = irq.read();
        // Full: the next bytes wait in the transmit FIFO, the transmitter shows busy, and no
        // THR-empty interrupt comes.
        for b in b"efghijklmnopqrstuvwx" {
            s.write(THR, &[*b]);
        }
        assert_eq!(lsr(&mut s) & 0x60, 0, "busy");
        assert!(irq.read().is_err(), "no THR-empty interrupt while busy");
        // The driver's interrupt handler acknowledges the last THR-empty interrupt (IIR).
        let mut iir = [0u8];
        s.read(2, &mut iir);
        assert_eq!(s.dropped(), 4, "16 held, the rest dropped");
        // The divisor latch is not the transmitter.
        s.write(3, &[0x80]);
        s.write(THR, &[0x01]);
        s.write(3, &[0x03]);
        // The event loop drains and flushes: the held bytes follow, in order, with interrupts.
        let mut out = Vec::new();
        while lsr(&mut s) & 0x20 == 0 {
            buf.take(&mut out);
            s.flush_held();
        }
        buf.take(&mut out);
        assert_eq!(out, b"abcdefghijklmnopqrst");
        assert!(irq.read().expect("THR-empty interrupt after the flush") >= 1);
    }

    #[test]
    fn state_round_trips_with_fifo_and_held_bytes() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let (mut s, _) = Serial::new(
            EventFdTrigger(irq.try_clone().expect("clone")),
            Shared::default(),
        )
        .expect("serial");
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]); // scratch
        s.enqueue_input(b"abc");
        s.held.extend(b"xy");
        let st = s.state();
        let json = serde_json::to_string(&st).expect("serialise");
        let back: SerialDeviceState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, st);
        let (mut r, _) =
            Serial::from_state(&back, EventFdTrigger(irq), Shared::default()).expect("restore");
        assert_eq!(r.state(), st);
        let mut b = [0u8];
        r.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        r.read(THR, &mut b);
        assert_eq!(b[0], b'a', "the receive FIFO came back");
        let mut big = st.clone();
        big.uart.in_buffer = vec![0; 65];
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        assert!(Serial::from_state(&big, EventFdTrigger(irq), Shared::default()).is_err());
    }

    #[test]
    fn input_fills_fifo_and_signals_drain() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let (mut s, drained) = Serial::new(EventFdTrigger(irq), Shared::default()).expect("serial");
        let data = [b'x'; 100];
        let taken = s.enqueue_input(&data);
        assert_eq!(taken, 64);
        assert_eq!(s.enqueue_input(&data), 0);
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        for _ in 0..64 {
            s.read(THR, &mut b);
            assert_eq!(b[0], b'x');
        }
        assert_eq!(drained.read().expect("drained signalled"), 1);
    }
}
