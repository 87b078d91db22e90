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

/// The writer behind the UART: forwards to the owner's sink and flushes, so prompts without
/// a newline appear at once.
pub(crate) struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
}

impl ConsoleWriter {
    pub(crate) fn new(output: ConsoleOutput) -> Self {
        Self {
            sink: match output {
                ConsoleOutput::Discard => None,
                ConsoleOutput::Writer(w) => Some(w),
                ConsoleOutput::Capture(c) => Some(Box::new(c)),
            },
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(s) = self.sink.as_mut() {
            s.write_all(buf)?;
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
    fn capture_is_bounded() {
        let mut c = Capture::new(8);
        let view = c.clone();
        c.write_all(b"hello ").expect("write");
        c.write_all(b"world").expect("write");
        assert_eq!(view.text(), "hello wo");
        assert_eq!(view.dropped(), 3);
    }
}
