//! The VM's console as its owner sees it: where guest serial output goes, and where guest
//! serial input comes from. Guest output leaves the vCPU as bytes in a bounded buffer
//! ([`devices::legacy::ConsoleBuffer`]); the event loop's `ConsoleOutputHandler` writes it
//! to the owner's sink without blocking.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::{ConsoleBuffer, Serial};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

/// An in-memory capture of console output, shared between the VM and its owner. It keeps
/// the first `limit` bytes and counts the rest as dropped, so a chatty guest cannot grow
/// the host's memory without bound.
#[derive(Clone, Debug)]
pub struct Capture {
    inner: Arc<Mutex<CaptureInner>>,
}

#[derive(Debug)]
struct CaptureInner {
    data: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Capture {
    /// A capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CaptureInner {
                data: Vec::new(),
                limit,
                dropped: 0,
            })),
        }
    }

    /// What was captured so far.
    pub fn contents(&self) -> Vec<u8> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .data
            .clone()
    }

    /// What was captured so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }

    /// Bytes that did not fit.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

impl Default for Capture {
    /// A capture of up to 1 MiB.
    fn default() -> Self {
        Self::new(1 << 20)
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.limit.saturating_sub(c.data.len());
        let take = room.min(buf.len());
        c.data.extend_from_slice(&buf[..take]);
        c.dropped += (buf.len() - take) as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where guest console output goes. Guest output is buffered (64 KiB) and written by the
/// VM's event-loop thread, never by a vCPU; while the host side does not take it, the buffer
/// fills and the guest sees a busy UART.
#[derive(Default)]
pub enum ConsoleOutput {
    /// Dropped.
    #[default]
    Discard,
    /// Written to this writer on the event-loop thread, each batch followed by a flush. A
    /// writer that blocks holds up that VM's devices: prefer [`Self::File`].
    Writer(Box<dyn Write + Send>),
    /// Written to this file, pipe, terminal or socket without ever blocking (for a pipe or a
    /// terminal Ember opens it again non-blocking, leaving the given descriptor as it is).
    File(File),
    /// Kept in memory.
    Capture(Capture),
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Discard => write!(f, "Discard"),
            Self::Writer(_) => write!(f, "Writer(..)"),
            Self::File(file) => write!(f, "File(fd {})", file.as_raw_fd()),
            Self::Capture(_) => write!(f, "Capture(..)"),
        }
    }
}

/// Where guest console input comes from.
#[derive(Debug, Default)]
pub enum ConsoleInput {
    /// No input.
    #[default]
    None,
    /// Read from this file (a terminal, a pipe); end of file ends input, not the VM.
    File(File),
    /// A pipe whose writing end `VmHandle::console_input` hands out.
    Pipe,
}

/// The console of one VM.
#[derive(Debug, Default)]
pub struct Console {
    /// Guest output.
    pub output: ConsoleOutput,
    /// Guest input.
    pub input: ConsoleInput,
}

/// Finds the first occurrence of a byte string in a stream fed a few bytes at a time
/// (Knuth-Morris-Pratt: constant work per byte, no buffering).
#[derive(Debug)]
pub(crate) struct MarkerMatcher {
    pattern: Vec<u8>,
    failure: Vec<usize>,
    matched: usize,
    found: bool,
}

impl MarkerMatcher {
    pub(crate) fn new(pattern: &str) -> Self {
        let p = pattern.as_bytes().to_vec();
        let mut failure = vec![0; p.len()];
        let mut k = 0;
        for i in 1..p.len() {
            while k > 0 && p[i] != p[k] {
                k = failure[k - 1];
            }
            if p[i] == p[k] {
                k += 1;
            }
            failure[i] = k;
        }
        Self {
            found: p.is_empty(),
            pattern: p,
            failure,
            matched: 0,
        }
    }

    /// Feeds bytes; true exactly once, when the pattern completes for the first time.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.found {
            return false;
        }
        for &b in bytes {
            while self.matched > 0 && self.pattern[self.matched] != b {
                self.matched = self.failure[self.matched - 1];
            }
            if self.pattern[self.matched] == b {
                self.matched += 1;
                if self.matched == self.pattern.len() {
                    self.found = true;
                    return true;
                }
            }
        }
        false
    }
}

/// The writer behind the UART, on the vCPU thread: records when the first byte and the
/// console marker appear, and puts the bytes in the console buffer (never a host write).
pub(crate) struct ConsoleWriter {
    buffer: Arc<ConsoleBuffer>,
    control: Option<Arc<crate::control::VmControl>>,
    marker: Option<MarkerMatcher>,
}

impl ConsoleWriter {
    pub(crate) fn new(buffer: Arc<ConsoleBuffer>) -> Self {
        Self {
            buffer,
            control: None,
            marker: None,
        }
    }

    /// Records timestamps into `control`, and the first appearance of `marker`.
    pub(crate) fn with_timing(
        mut self,
        control: Arc<crate::control::VmControl>,
        marker: Option<&str>,
    ) -> Self {
        self.control = Some(control);
        self.marker = marker.map(MarkerMatcher::new);
        self
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(c) = &self.control {
            if c.first_output.get().is_none() {
                let _ = c.first_output.set(Instant::now());
            }
            if let Some(m) = self.marker.as_mut() {
                if m.feed(buf) {
                    let _ = c.marker.set(Instant::now());
                }
            }
        }
        // The UART holds bytes while the buffer is full, so this takes everything.
        Ok(self.buffer.push(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART type of a VM.
pub(crate) type VmSerial = Serial<ConsoleWriter>;

enum Sink {
    Discard,
    /// A caller's writer: called on the event loop's thread.
    Writer(Box<dyn Write + Send>),
    /// A descriptor of Ember's own, non-blocking, or a socket written with `MSG_DONTWAIT`.
    File(File, bool),
}

/// Event-loop subscriber that moves guest output from the console buffer to the owner's
/// sink. A sink that would block is watched for room (the buffer then fills and the UART
/// shows the guest a busy transmitter); one that fails is dropped with a message.
pub(crate) struct ConsoleOutputHandler {
    buffer: Arc<ConsoleBuffer>,
    serial: Arc<Mutex<VmSerial>>,
    sink: Sink,
    pending: Vec<u8>,
    sent: usize,
    watching_sink: bool,
}

impl ConsoleOutputHandler {
    const WAKE: u32 = 0;
    const WRITABLE: u32 = 1;
    /// Buffer takes per event, so a guest that writes without pause cannot starve the loop.
    const ROUNDS: usize = 16;

    pub(crate) fn new(
        output: ConsoleOutput,
        buffer: Arc<ConsoleBuffer>,
        serial: Arc<Mutex<VmSerial>>,
    ) -> Self {
        let sink = match output {
            ConsoleOutput::Discard => Sink::Discard,
            ConsoleOutput::Writer(w) => Sink::Writer(w),
            ConsoleOutput::Capture(c) => Sink::Writer(Box::new(c)),
            ConsoleOutput::File(f) => {
                let (f, socket) = nonblocking(f);
                Sink::File(f, socket)
            }
        };
        Self {
            buffer,
            serial,
            sink,
            pending: Vec::with_capacity(CONSOLE_BUFFER_BYTES),
            sent: 0,
            watching_sink: false,
        }
    }

    /// Takes what the guest wrote (and lets the UART's held bytes follow).
    fn refill(&mut self) {
        self.pending.clear();
        self.sent = 0;
        self.buffer.take(&mut self.pending);
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_held();
        self.buffer.take(&mut self.pending);
    }

    /// Writes pending bytes; `Ok(false)` when the sink would block.
    fn write_pending(&mut self) -> std::io::Result<bool> {
        while self.sent < self.pending.len() {
            let rest = &self.pending[self.sent..];
            let r = match &mut self.sink {
                Sink::Discard => Ok(rest.len()),
                Sink::Writer(w) => w.write(rest).and_then(|n| w.flush().map(|_| n)),
                Sink::File(f, false) => f.write(rest),
                Sink::File(f, true) => {
                    // SAFETY: sends from a valid buffer on a descriptor we own.
                    let n = unsafe {
                        libc::send(
                            f.as_raw_fd(),
                            rest.as_ptr().cast(),
                            rest.len(),
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                }
            };
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn pump(&mut self, ops: &mut EventOps) {
        for _ in 0..Self::ROUNDS {
            if self.sent >= self.pending.len() {
                self.refill();
                if self.pending.is_empty() {
                    self.watch_sink(ops, false);
                    return;
                }
            }
            match self.write_pending() {
                Ok(true) => {}
                Ok(false) => {
                    self.watch_sink(ops, true);
                    return;
                }
                Err(e) => {
                    warn!("console: output failed, discarding the guest's output from now on: {e}");
                    self.watch_sink(ops, false);
                    self.sink = Sink::Discard;
                }
            }
        }
    }

    fn watch_sink(&mut self, ops: &mut EventOps, on: bool) {
        let Sink::File(f, _) = &self.sink else {
            return;
        };
        if on == self.watching_sink {
            return;
        }
        let ev = Events::with_data(f, Self::WRITABLE, EventSet::OUT);
        match if on { ops.add(ev) } else { ops.remove(ev) } {
            Ok(()) => self.watching_sink = on,
            Err(e) => warn!("console: cannot watch the output: {e:?}"),
        }
    }

    /// At the VM's end (every vCPU stopped): writes out what is left, giving up once the sink
    /// has taken nothing for `stall` (nobody reads it), so that an end never hangs on it.
    pub(crate) fn finish(&mut self, stall: Duration) {
        let mut last_progress = Instant::now();
        loop {
            if self.sent >= self.pending.len() {
                self.refill();
                if self.pending.is_empty() {
                    return;
                }
            }
            let before = self.sent;
            match self.write_pending() {
                Ok(true) => last_progress = Instant::now(),
                Ok(false) => {
                    if self.sent > before {
                        last_progress = Instant::now();
                    }
                    let left = stall.saturating_sub(last_progress.elapsed());
                    if left.is_zero() {
                        return;
                    }
                    if let Sink::File(f, _) = &self.sink {
                        let mut p = libc::pollfd {
                            fd: f.as_raw_fd(),
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd; the descriptor is ours and open.
                        unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
                    }
                }
                Err(_) => return,
            }
        }
    }
}

impl MutEventSubscriber for ConsoleOutputHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            self.buffer.wake_event(),
            Self::WAKE,
            EventSet::IN,
        )) {
            error!("console: cannot watch guest output: {e:?}");
        }
        // A restored UART may hold bytes from before its snapshot, waiting for room.
        self.pump(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            Self::WAKE => {
                let _ = self.buffer.wake_event().read();
                // Also when bytes are pending: a writer that said WouldBlock is tried again.
                self.pump(ops);
            }
            Self::WRITABLE => self.pump(ops),
            _ => {
                let _ = ops.remove(events);
            }
        }
    }
}

/// Guest output Ember holds before the UART shows the guest a busy transmitter.
pub(crate) const CONSOLE_BUFFER_BYTES: usize = 64 << 10;

/// A descriptor for `file` that never blocks Ember: a pipe or a terminal is opened again
/// non-blocking (through /proc/self/fd, `O_NOCTTY`), so the flag does not change the
/// description the caller and others share (a terminal's); a socket is written with
/// `MSG_DONTWAIT` (returns `true`); a regular file never blocks. What can be neither (a pty
/// master, which would open a new pty; no /proc) stays as it is and may block the event loop.
fn nonblocking(file: File) -> (File, bool) {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let Ok(meta) = file.metadata() else {
        return (file, false);
    };
    let t = meta.file_type();
    if t.is_socket() {
        return (file, true);
    }
    if t.is_file() || t.is_block_device() {
        return (file, false);
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if std::fs::read_link(&path).is_ok_and(|p| p == std::path::Path::new("/dev/ptmx")) {
        return (file, false);
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => (f, false),
        Err(e) => {
            warn!("console: output cannot be made non-blocking ({e}); a stalled reader can stall this VM's devices");
            (file, false)
        }
    }
}

/// A close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(rd), File::from(wr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_across_writes() {
        let mut m = MarkerMatcher::new("Run /init");
        let stream = b"xx Run /ini Run /in";
        assert!(!stream.iter().any(|b| m.feed(&[*b])));
        assert!(!m.feed(b"i"));
        assert!(m.feed(b"t as init"));
        assert!(!m.feed(b"Run /init"), "only the first time");
        let mut aab = MarkerMatcher::new("aab");
        assert!(aab.feed(b"aaab"));
    }

    #[test]
    fn capture_is_bounded() {
        let mut c = Capture::new(8);
        let view = c.clone();
        c.write_all(b"hello ").expect("write");
        c.write_all(b"world").expect("write");
        assert_eq!(view.text(), "hello wo");
        assert_eq!(view.dropped(), 3);
    }
}
