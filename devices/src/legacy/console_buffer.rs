//! The bounded buffer between the UART and the host side of the console. A vCPU puts guest
//! output in it and never makes a host write itself; the event loop takes the output out and
//! writes it to the host without blocking. While the buffer is full, the UART shows the guest a
//! busy transmitter (see [`crate::legacy::Serial::with_output_buffer`]), the back-pressure a
//! 16550 driver expects, so a host that stops reading stalls the guest's console, never a vCPU.

use std::collections::VecDeque;
use std::sync::Mutex;

use log::warn;
use vmm_sys_util::eventfd::EventFd;

/// Guest console output on its way to the host.
pub struct ConsoleBuffer {
    ring: Mutex<Ring>,
    wake: EventFd,
}

struct Ring {
    data: VecDeque<u8>,
    capacity: usize,
    /// Whether the event loop has been woken for what is in `data` (one wake per batch, not
    /// one system call per byte).
    woken: bool,
}

impl ConsoleBuffer {
    /// A buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            ring: Mutex::new(Ring {
                data: VecDeque::with_capacity(capacity),
                capacity,
                woken: false,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free bytes.
    pub fn room(&self) -> usize {
        let r = self.ring();
        r.capacity - r.data.len()
    }

    /// Appends as much of `bytes` as fits and returns how much that was; the first bytes after
    /// the event loop last took the buffer wake it.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut r = self.ring();
        let n = bytes.len().min(r.capacity - r.data.len());
        r.data.extend(&bytes[..n]);
        if n > 0 && !r.woken {
            r.woken = true;
            if let Err(e) = self.wake.write(1) {
                warn!("console: cannot wake the event loop: {e}");
            }
        }
        n
    }

    /// Moves everything buffered to the end of `out`.
    pub fn take(&self, out: &mut Vec<u8>) {
        let mut r = self.ring();
        out.extend(r.data.drain(..));
        r.woken = false;
    }

    /// The eventfd that becomes readable when output arrives.
    pub fn wake_event(&self) -> &EventFd {
        &self.wake
    }
}

impl std::fmt::Debug for ConsoleBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.ring();
        write!(f, "ConsoleBuffer({}/{})", r.data.len(), r.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_one_wake_per_batch() {
        let b = ConsoleBuffer::new(8).expect("eventfd");
        assert_eq!(b.push(b"hello"), 5);
        assert_eq!(b.push(b" world"), 3, "only what fits");
        assert_eq!(b.room(), 0);
        assert_eq!(
            b.wake_event().read().expect("woken"),
            1,
            "one wake for both pushes"
        );
        let mut out = Vec::new();
        b.take(&mut out);
        assert_eq!(out, b"hello wo");
        assert_eq!(b.room(), 8);
        assert!(b.wake_event().read().is_err(), "nothing new");
        assert_eq!(b.push(b"!"), 1);
        assert_eq!(b.wake_event().read().expect("woken again"), 1);
    }
}
