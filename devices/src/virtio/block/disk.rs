//! A disk image on the host: opened read-write with an exclusive `flock`, or read-only with a
//! shared one, so two VMs never write the same image; its capacity in sectors.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{ID_BYTES, SECTOR_SIZE};

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image cannot be opened.
    #[error("Cannot open disk image {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// Another process holds a conflicting lock.
    #[error("Disk image {0} is in use by another VM or process (it is locked)")]
    Locked(PathBuf),
    /// Locking failed for another reason.
    #[error("Cannot lock disk image {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    /// The size cannot be read.
    #[error("Cannot read the size of disk image {0}")]
    Size(PathBuf, #[source] std::io::Error),
    /// The image is smaller than one sector.
    #[error("Disk image {0} is smaller than one 512-byte sector")]
    TooSmall(PathBuf),
    /// The serial is too long.
    #[error("Disk serial '{0}' is longer than 20 bytes")]
    SerialTooLong(String),
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct Disk {
    /// The image.
    pub file: File,
    /// Where it was opened.
    pub path: PathBuf,
    /// Whether the guest may write it.
    pub read_only: bool,
    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub sectors: u64,
    /// The GET_ID answer.
    pub serial: String,
    /// A sync of the image failed once: written data may be lost, so writes fail from then on.
    pub sync_failed: bool,
}

impl Disk {
    /// Opens and locks `path`.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, DiskError> {
        if serial.len() > ID_BYTES {
            return Err(DiskError::SerialTooLong(serial.to_string()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::Open(path.to_path_buf(), e))?;
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskError::Locked(path.to_path_buf())
            } else {
                DiskError::Lock(path.to_path_buf(), e)
            });
        }
        // Seeking to the end works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| DiskError::Size(path.to_path_buf(), e))?;
        let sectors = size / SECTOR_SIZE;
        if sectors == 0 {
            return Err(DiskError::TooSmall(path.to_path_buf()));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors,
            serial: serial.to_string(),
            sync_failed: false,
        })
    }
}
