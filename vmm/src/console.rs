//! The VM's console as its owner sees it: where guest serial output goes, and where guest
//! serial input comes from.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

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

/// Where guest console output goes.
#[derive(Default)]
pub enum ConsoleOutput {
    /// Dropped.
    #[default]
    Discard,
    /// Written to this writer, each guest write followed by a flush.
    Writer(Box<dyn Write + Send>),
    /// Kept in memory.
    Capture(Capture),
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Discard => write!(f, "Discard"),
            Self::Writer(_) => write!(f, "Writer(..)"),
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

/// The writer behind the UART: forwards to the owner's sink and flushes, so prompts without
/// a newline appear at once, and records when the first byte and the console marker appear.
pub(crate) struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    control: Option<std::sync::Arc<crate::control::VmControl>>,
    marker: Option<MarkerMatcher>,
}

impl ConsoleWriter {
    pub(crate) fn new(output: ConsoleOutput) -> Self {
        Self {
            sink: match output {
                ConsoleOutput::Discard => None,
                ConsoleOutput::Writer(w) => Some(w),
                ConsoleOutput::Capture(c) => Some(Box::new(c)),
            },
            control: None,
            marker: None,
        }
    }

    /// Records timestamps into `control`, and the first appearance of `marker`.
    pub(crate) fn with_timing(
        mut self,
        control: std::sync::Arc<crate::control::VmControl>,
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
                let _ = c.first_output.set(std::time::Instant::now());
            }
            if let Some(m) = self.marker.as_mut() {
                if m.feed(buf) {
                    let _ = c.marker.set(std::time::Instant::now());
                }
            }
        }
        if let Some(s) = self.sink.as_mut() {
            // Like `write_all`, except that a write blocked on a sink nobody drains (a full
            // pipe, a stopped terminal) gives up once the VM is stopping: the vCPU's kick
            // interrupts it, and the bytes are dropped rather than the VM never ending.
            let mut rest = buf;
            while !rest.is_empty() {
                match s.write(rest) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        if self.control.as_ref().is_some_and(|c| c.should_stop()) {
                            return Ok(buf.len());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            s.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.sink.as_mut() {
            Some(s) => s.flush(),
            None => Ok(()),
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
