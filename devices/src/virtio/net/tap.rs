//! A TAP interface on the host (Linux `tun`, Documentation/networking/tuntap.rst): opened by
//! name with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, or taken as an already-open descriptor;
//! non-blocking, with the virtio-net header size set to that of virtio 1.x (12 bytes) and no
//! offloads until the guest accepts some ([`Tap::set_offload`]). Written by hand: a few ioctls, no crate of rust-vmm's covers TAP devices alone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETOFFLOAD` flags (`linux/if_tun.h`).
pub const TUN_F_CSUM: u32 = 0x01;
/// TCP segmentation offload, IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCP segmentation offload, IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN bits.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// The virtio-net header the TAP exchanges with each frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("Invalid TAP name '{0}' (1 to 15 bytes, no '/', NUL or white space)")]
    Name(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("Cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// The interface cannot be attached (missing, in use, not a TAP, no permission).
    #[error("Cannot attach TAP device '{0}'")]
    Attach(String, #[source] std::io::Error),
    /// The descriptor is not a TAP with a virtio-net header.
    #[error("Descriptor {0} is not a TAP device opened with IFF_VNET_HDR")]
    NotVnetTap(RawFd),
    /// Configuring the header size or offloads failed.
    #[error("Cannot configure TAP device '{0}'")]
    Configure(String, #[source] std::io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name` (created by the user, or by the kernel if the
    /// caller may create interfaces).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(TapError::Name(name.to_string()));
        }
        // SAFETY: a NUL-terminated path and valid flags.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned here only.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &req) } < 0 {
            return Err(TapError::Attach(
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Takes an already-open TAP descriptor (a service that creates its TAPs hands them over);
    /// it must have `IFF_VNET_HDR`. Made non-blocking and close-on-exec.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes an ifreq into `req`.
        if unsafe { libc::ioctl(raw, TUNGETIFF, &mut req) } < 0
            || req.flags & IFF_VNET_HDR == 0
            || req.flags & IFF_TAP == 0
        {
            return Err(TapError::NotVnetTap(raw));
        }
        // SAFETY: fcntl with integer arguments on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
            libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let tap = Self {
            file: File::from(fd),
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        };
        tap.configure()?;
        Ok(tap)
    }

    fn configure(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int; TUNSETOFFLOAD takes the flags as its argument.
        let ok = unsafe {
            libc::ioctl(fd, TUNSETVNETHDRSZ, &size) == 0
                && libc::ioctl(fd, TUNSETOFFLOAD, 0 as libc::c_ulong) == 0
        };
        if !ok {
            return Err(TapError::Configure(
                self.name.clone(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Sets what the TAP may hand up with a frame (`TUN_F_*`: partial checksums, TSO): the
    /// offloads the guest accepted for its receive side.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags as its argument.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A stand-in with a TAP's frame semantics for tests: one end of a `SOCK_SEQPACKET`
    /// socket pair (one read or write per frame); returns the other end, the "host side".
    #[cfg(test)]
    pub fn pair() -> (Self, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two descriptors, then owned here.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair");
        // SAFETY: both descriptors were just created.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        (
            Self {
                file: a,
                name: "test".into(),
            },
            b,
        )
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its header) into `buf`; `WouldBlock` when none is waiting.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its header); `WouldBlock` when the interface's queue is full.
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for n in ["", "a/b", "with space", "sixteen-bytes-xx"] {
            assert!(matches!(Tap::open(n), Err(TapError::Name(_))), "{n:?}");
        }
    }

    #[test]
    fn a_descriptor_that_is_no_tap_is_refused() {
        let f = File::open("/dev/null").expect("null");
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(f)),
            Err(TapError::NotVnetTap(_))
        ));
    }
}
