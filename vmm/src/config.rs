//! The VM's configuration: plain data, validated once by [`VmConfig::validate`] before any
//! resource is created, so everything after it can trust the values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use arch::x86_64::layout::MAX_VCPUS;

/// Smallest guest memory Ember accepts: boot structures sit below 1 MiB and kernels load at
/// 1 MiB.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Default command line: serial console, reset on reboot (`reboot=k`) and one second after a
/// panic, no PCI, no module loading, no probing of legacy hardware the VM does not have.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check tsc=reliable";

/// Whether to apply the PVM compatibility settings (see `arch::x86_64::cpuid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PvmMode {
    /// Apply them when the host's KVM is kvm-pvm.
    #[default]
    Auto,
    /// Always apply them.
    On,
    /// Never apply them.
    Off,
}

/// Errors in a [`VmConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--net` value does not parse.
    #[error("Invalid network interface '{0}': use tap=NAME[,mac=MAC] or fd=N[,mac=MAC]")]
    NetSyntax(String),
    /// A MAC address does not parse or is multicast.
    #[error("Invalid MAC address '{0}': use six hex bytes, aa:bb:cc:dd:ee:ff, not multicast")]
    Mac(String),
    /// The kernel file cannot be opened.
    #[error("Cannot open kernel image {path}")]
    Kernel {
        /// The path given.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs file cannot be opened.
    #[error("Cannot open initramfs {path}")]
    Initrd {
        /// The path given.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A path names a directory or other non-file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// Memory size below the minimum.
    #[error("Guest memory of {0} bytes is too small; the minimum is 4 MiB")]
    MemoryTooSmall(u64),
    /// Memory size not a multiple of the page size.
    #[error("Guest memory of {0} bytes is not a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// Memory size above what the host has.
    #[error("Guest memory of {requested} MiB is more than this host can give ({available} MiB of RAM and swap)")]
    MemoryTooLarge {
        /// Requested MiB.
        requested: u64,
        /// Host RAM plus swap, in MiB.
        available: u64,
    },
    /// vCPU count out of range.
    #[error("{0} vCPUs requested; Ember supports 1 to 254")]
    VcpuCount(u32),
    /// A memory size string that does not parse.
    #[error("Invalid memory size '{0}': use MiB (512) or a suffix (512M, 2G)")]
    MemorySyntax(String),
    /// A JSON configuration that does not parse.
    #[error("Invalid VM configuration: {0}")]
    Json(String),
    /// The guest command cannot be encoded.
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    /// A `--disk` value that does not parse.
    #[error("Invalid disk '{0}': use PATH[,ro][,serial=ID]")]
    DiskSyntax(String),
    /// Too many disks.
    #[error("{0} disks requested; Ember supports at most 19")]
    TooManyDisks(usize),
    /// A disk serial longer than GET_ID can return.
    #[error("Disk serial '{0}' is longer than 20 bytes")]
    DiskSerial(String),
    /// A `--vsock` value that does not parse.
    #[error("Invalid vsock device '{0}': use cid=N,socket=PATH")]
    VsockSyntax(String),
    /// A guest CID that is reserved.
    #[error("Invalid vsock guest CID {0}: use 3 to 4294967294 (0-2 and -1 are reserved)")]
    VsockCid(u64),
    /// A vsock socket path too long for a Unix socket address (with `_PORT` appended).
    #[error("vsock socket path {0} is too long for a Unix socket (at most 96 bytes)")]
    VsockPath(PathBuf),
    /// The command line holds a NUL or a non-ASCII byte.
    #[error("The kernel command line may only hold printable ASCII")]
    CmdlineChars,
}

/// Most disks a VM can have (one GSI each, 5 to 23).
pub const MAX_DISKS: usize = 19;

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file (or block device).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub read_only: bool,
    /// Serial number returned to GET_ID (at most 20 bytes); `None` names it after its slot.
    #[serde(default)]
    pub serial: Option<String>,
}

impl DiskConfig {
    /// Parses the CLI form `PATH[,ro][,rw][,serial=ID]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let mut parts = spec.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ConfigError::DiskSyntax(spec.to_string()))?;
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            read_only: false,
            serial: None,
        };
        for opt in parts {
            match opt {
                "ro" => disk.read_only = true,
                "rw" => disk.read_only = false,
                o if o.starts_with("serial=") => {
                    disk.serial = Some(o["serial=".len()..].to_string())
                }
                _ => return Err(ConfigError::DiskSyntax(spec.to_string())),
            }
        }
        Ok(disk)
    }
}

/// A virtio-net interface on a host TAP (which the user creates and configures).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP interface's name (empty when [`Self::fd`] gives the TAP).
    #[serde(default)]
    pub tap: String,
    /// An already-open TAP descriptor of this process (opened with `IFF_VNET_HDR`), for
    /// services that create their TAPs; Ember uses a duplicate of it. A restore reopens the
    /// TAP by the name the descriptor had.
    #[serde(default)]
    pub fd: Option<i32>,
    /// MAC address `aa:bb:cc:dd:ee:ff`; `None` gives a locally administered one by slot.
    #[serde(default)]
    pub mac: Option<String>,
}

impl NetConfig {
    /// Parses the CLI form `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::NetSyntax(spec.to_string());
        let mut tap = None;
        let mut fd = None;
        let mut mac = None;
        for opt in spec.split(',') {
            match opt.split_once('=') {
                Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
                Some(("fd", v)) => {
                    fd = Some(v.parse::<i32>().ok().filter(|f| *f >= 0).ok_or_else(bad)?)
                }
                Some(("mac", v)) => mac = Some(v.to_string()),
                _ => return Err(bad()),
            }
        }
        if tap.is_some() == fd.is_some() {
            return Err(bad()); // exactly one of them
        }
        let net = NetConfig {
            tap: tap.unwrap_or_default(),
            fd,
            mac,
        };
        net.mac_bytes(0)?;
        Ok(net)
    }

    /// The MAC address: the configured one, or `06:00:ac:10:00:<slot+1>`.
    pub fn mac_bytes(&self, slot: usize) -> Result<[u8; 6], ConfigError> {
        let Some(m) = &self.mac else {
            return Ok([0x06, 0x00, 0xac, 0x10, 0x00, (slot as u8).wrapping_add(1)]);
        };
        let bad = || ConfigError::Mac(m.clone());
        let parts: Vec<&str> = m.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (o, p) in b.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 != 0 {
            return Err(bad()); // a multicast address cannot be a NIC's
        }
        Ok(b)
    }
}

/// A virtio-vsock device whose host side is a Unix socket, as Firecracker's: a host process
/// connects to `socket` and writes `CONNECT <port>\n` to reach guest port `port`; a guest
/// connection to host port `P` becomes a connection to `<socket>_P`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The Unix socket Ember listens on (created at start, removed when the VM ends; it must
    /// not exist).
    pub socket: PathBuf,
}

/// Longest vsock socket path: a `sockaddr_un` holds 107 bytes, less `_4294967295`.
pub const VSOCK_PATH_MAX: usize = 96;

impl VsockConfig {
    /// Parses the CLI form `cid=N,socket=PATH`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::VsockSyntax(spec.to_string());
        let mut cid = None;
        let mut socket = None;
        for opt in spec.split(',') {
            match opt.split_once('=') {
                Some(("cid", v)) => cid = Some(v.parse::<u64>().map_err(|_| bad())?),
                Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
                _ => return Err(bad()),
            }
        }
        let cid = cid.ok_or_else(bad)?;
        let v = VsockConfig {
            cid: u32::try_from(cid).map_err(|_| ConfigError::VsockCid(cid))?,
            socket: socket.ok_or_else(bad)?,
        };
        v.validate()?;
        Ok(v)
    }

    /// Checks the CID and the path's length.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cid < 3 || self.cid == u32::MAX {
            return Err(ConfigError::VsockCid(u64::from(self.cid)));
        }
        if self.socket.as_os_str().len() > VSOCK_PATH_MAX {
            return Err(ConfigError::VsockPath(self.socket.clone()));
        }
        Ok(())
    }
}

/// Everything needed to build a VM. Deserializable (JSON, ...) with unknown fields refused;
/// `memory` takes bytes as a number or a size string such as `"512M"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF `vmlinux` (entered through PVH when it has the note) or a bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` uses [`DEFAULT_CMDLINE`].
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Guest memory in bytes.
    #[serde(default = "default_memory", deserialize_with = "deserialize_memory")]
    pub memory: u64,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// PVM compatibility settings.
    #[serde(default)]
    pub pvm: PvmMode,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in the order the guest sees them (eth0, eth1, ...).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// A command for the project's initramfs init to run (see [`crate::command`]); the VM's
    /// exit status is then the command's.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The project's init waits for its command on the console after "ready" (kernel
    /// parameter `ember.wait`): for a snapshot taken there, whose restores each bring a
    /// command ([`crate::Vm::restore_with_command`]).
    #[serde(default)]
    pub wait_for_command: bool,
    /// A string whose first appearance on the console is timestamped
    /// ([`crate::Timestamps::console_marker`]), e.g. `"Run /init as init process"`.
    #[serde(default)]
    pub console_marker: Option<String>,
    /// seccomp filters on the VM's threads ([`crate::seccomp`]).
    #[serde(default)]
    pub seccomp: crate::seccomp::SeccompMode,
    /// Back guest memory with transparent huge pages (`madvise(MADV_HUGEPAGE)`); otherwise
    /// with 4 KiB pages. Both are populated lazily, as the guest touches its memory.
    #[serde(default = "default_thp")]
    pub thp: bool,
}

/// Whether guest memory uses transparent huge pages unless configured otherwise; chosen by
/// measurement (see the README's "Benchmarking").
pub const DEFAULT_THP: bool = false;

fn default_thp() -> bool {
    DEFAULT_THP
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}

fn default_vcpus() -> u8 {
    1
}

fn deserialize_memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_memory_size(&t).map_err(serde::de::Error::custom),
    }
}

impl VmConfig {
    /// A configuration booting `kernel` with the defaults: 256 MiB, one vCPU.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            memory: DEFAULT_MEMORY,
            vcpus: 1,
            pvm: PvmMode::Auto,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            command: None,
            wait_for_command: false,
            console_marker: None,
            seccomp: crate::seccomp::SeccompMode::Deny,
            thp: DEFAULT_THP,
        }
    }

    /// Starts a builder for a VM booting `kernel`.
    pub fn builder(kernel: impl Into<PathBuf>) -> VmConfigBuilder {
        VmConfigBuilder(Self::new(kernel))
    }

    /// Parses a JSON configuration (unknown fields are errors). Call [`Self::validate`]
    /// (or just start the VM) to check the values.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))
    }

    /// Checks every value and that the files can be opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_boot_files()?;
        self.validate_machine()
    }

    /// The kernel and initramfs can be read (a boot needs them, a restore does not).
    fn validate_boot_files(&self) -> Result<(), ConfigError> {
        check_file(&self.kernel).map_err(|e| match e {
            FileCheck::Io(source) => ConfigError::Kernel {
                path: self.kernel.clone(),
                source,
            },
            FileCheck::NotAFile => ConfigError::NotAFile(self.kernel.clone()),
        })?;
        if let Some(initrd) = &self.initrd {
            check_file(initrd).map_err(|e| match e {
                FileCheck::Io(source) => ConfigError::Initrd {
                    path: initrd.clone(),
                    source,
                },
                FileCheck::NotAFile => ConfigError::NotAFile(initrd.clone()),
            })?;
        }
        Ok(())
    }

    /// Everything but the boot files: vCPUs, memory, disks, command, command line (a
    /// restored snapshot's configuration is checked with this).
    pub fn validate_machine(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(u32::from(self.vcpus)));
        }
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory));
        }
        if !self.memory.is_multiple_of(4096) {
            return Err(ConfigError::MemoryUnaligned(self.memory));
        }
        if let Some(available) = host_memory_bytes() {
            if self.memory > available {
                return Err(ConfigError::MemoryTooLarge {
                    requested: self.memory >> 20,
                    available: available >> 20,
                });
            }
        }
        for (i, n) in self.nets.iter().enumerate() {
            n.mac_bytes(i)?;
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        if self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some()) > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for d in &self.disks {
            if let Some(s) = d.serial.as_ref().filter(|s| s.len() > 20) {
                return Err(ConfigError::DiskSerial(s.clone()));
            }
        }
        if let Some(argv) = &self.command {
            crate::command::encode(argv)?;
        }
        if let Some(c) = &self.cmdline {
            if !c.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t') {
                return Err(ConfigError::CmdlineChars);
            }
        }
        Ok(())
    }
}

/// Builds a [`VmConfig`] step by step; [`VmConfigBuilder::build`] validates it.
#[derive(Clone, Debug)]
pub struct VmConfigBuilder(VmConfig);

impl VmConfigBuilder {
    /// Sets the initramfs.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.initrd = Some(path.into());
        self
    }

    /// Replaces the default kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.0.cmdline = Some(cmdline.into());
        self
    }

    /// Sets guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.0.memory = mib.saturating_mul(1 << 20);
        self
    }

    /// Sets the number of vCPUs.
    pub fn vcpus(mut self, n: u8) -> Self {
        self.0.vcpus = n;
        self
    }

    /// Backs guest memory with transparent huge pages (`true`) or 4 KiB pages.
    pub fn thp(mut self, on: bool) -> Self {
        self.0.thp = on;
        self
    }

    /// Sets the PVM compatibility mode.
    pub fn pvm(mut self, mode: PvmMode) -> Self {
        self.0.pvm = mode;
        self
    }

    /// Adds a disk.
    pub fn disk(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.0.disks.push(DiskConfig {
            path: path.into(),
            read_only,
            serial: None,
        });
        self
    }

    /// Adds a virtio-net interface on the TAP `tap`.
    pub fn net(mut self, tap: impl Into<String>, mac: Option<String>) -> Self {
        self.0.nets.push(NetConfig {
            tap: tap.into(),
            fd: None,
            mac,
        });
        self
    }

    /// Adds the virtio-vsock device: guest CID `cid`, host side on the Unix socket `socket`.
    pub fn vsock(mut self, cid: u32, socket: impl Into<PathBuf>) -> Self {
        self.0.vsock = Some(VsockConfig {
            cid,
            socket: socket.into(),
        });
        self
    }

    /// Sets a command for the guest's init to run.
    pub fn command<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.0.command = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Lets the project's init wait for its command on the console after "ready" (for a
    /// snapshot whose restores bring commands).
    pub fn wait_for_command(mut self) -> Self {
        self.0.wait_for_command = true;
        self
    }

    /// Timestamps the first appearance of `marker` on the console.
    pub fn console_marker(mut self, marker: impl Into<String>) -> Self {
        self.0.console_marker = Some(marker.into());
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<VmConfig, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

enum FileCheck {
    Io(std::io::Error),
    NotAFile,
}

fn check_file(path: &Path) -> Result<(), FileCheck> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(FileCheck::Io)?;
    let meta = f.metadata().map_err(FileCheck::Io)?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(FileCheck::NotAFile)
    }
}

/// The host's RAM plus swap in bytes, from /proc/meminfo.
fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("MemTotal:")? + field("SwapTotal:").unwrap_or(0)) * 1024)
}

/// Parses a memory size: a plain number is MiB; suffixes K, M, G, T (optionally followed by
/// `iB` or `B`) are binary units. Returns bytes.
pub fn parse_memory_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::MemorySyntax(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(err());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| err())?;
    let shift = match t[digits_end..].to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_interfaces_parse_by_name_or_descriptor_but_not_both() {
        let n = NetConfig::parse("tap=tap0,mac=06:00:00:00:00:01").expect("name");
        assert_eq!((n.tap.as_str(), n.fd), ("tap0", None));
        let n = NetConfig::parse("fd=7").expect("descriptor");
        assert_eq!((n.tap.as_str(), n.fd), ("", Some(7)));
        for bad in [
            "",
            "tap=",
            "fd=-1",
            "fd=x",
            "tap=a,fd=3",
            "mac=06:00:00:00:00:01",
            "tap=a,speed=10",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            NetConfig::parse("tap=a,mac=01:00:00:00:00:01").is_err(),
            "multicast MAC"
        );
    }

    #[test]
    fn vsock_devices_parse_and_reserved_cids_are_refused() {
        let v = VsockConfig::parse("cid=3,socket=/tmp/v.sock").expect("vsock");
        assert_eq!((v.cid, v.socket.as_path()), (3, Path::new("/tmp/v.sock")));
        for bad in [
            "cid=2,socket=/x",
            "cid=0,socket=/x",
            "cid=4294967295,socket=/x",
            "cid=99999999999,socket=/x",
            "cid=3",
            "socket=/x",
            "cid=3,socket=",
            "cid=3,socket=/x,port=1",
        ] {
            assert!(VsockConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("cid=3,socket=/{}", "a".repeat(VSOCK_PATH_MAX));
        assert!(matches!(
            VsockConfig::parse(&long),
            Err(ConfigError::VsockPath(_))
        ));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512").ok(), Some(512 << 20));
        assert_eq!(parse_memory_size("512M").ok(), Some(512 << 20));
        assert_eq!(parse_memory_size("2G").ok(), Some(2 << 30));
        assert_eq!(parse_memory_size("2g").ok(), Some(2 << 30));
        assert_eq!(parse_memory_size("1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_memory_size("4096K").ok(), Some(4 << 20));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "12Q",
            "99999999999999999999",
            "20000000T",
        ] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_specs() {
        let d = DiskConfig::parse("/img,ro,serial=abc").expect("valid");
        assert_eq!(
            d,
            DiskConfig {
                path: "/img".into(),
                read_only: true,
                serial: Some("abc".into())
            }
        );
        assert!(!DiskConfig::parse("a.img").expect("valid").read_only);
        assert!(!DiskConfig::parse("a.img,ro,rw").expect("valid").read_only);
        for bad in ["", ",ro", "a.img,bogus", "a.img,ro,"] {
            assert!(DiskConfig::parse(bad).is_err(), "{bad}");
        }
    }

    fn kernel_file() -> tempfile_like::TempFile {
        tempfile_like::TempFile::new(b"not really a kernel")
    }

    #[test]
    fn validation() {
        let k = kernel_file();
        let mut c = VmConfig::new(k.path());
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(0))));
        c.vcpus = 255;
        assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(255))));
        c.vcpus = 254;
        c.memory = 0;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooSmall(0))));
        c.memory = (64 << 20) + 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryUnaligned(_))));
        c.memory = 1 << 50;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        c.memory = 64 << 20;
        c.cmdline = Some("console=ttyS0\u{1}".into());
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineChars)));
        c.cmdline = None;
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(c.validate(), Err(ConfigError::Initrd { .. })));
        c.initrd = Some("/".into());
        assert!(matches!(c.validate(), Err(ConfigError::NotAFile(_))));
        // A FIFO with no writer is refused, not waited on.
        let fifo = std::env::temp_dir().join(format!("ember-fifo-{}", std::process::id()));
        let name = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        c.initrd = Some(fifo.clone());
        let r = c.validate();
        let _ = std::fs::remove_file(&fifo);
        assert!(matches!(r, Err(ConfigError::NotAFile(_))), "{r:?}");
        let missing = VmConfig::new("/nonexistent/vmlinux");
        assert!(matches!(
            missing.validate(),
            Err(ConfigError::Kernel { .. })
        ));
    }

    #[test]
    fn json_configs() {
        let k = kernel_file();
        let kp = k.path().display().to_string();
        let c = VmConfig::from_json(&format!(
            r#"{{"kernel": "{kp}", "memory": "512M", "vcpus": 2}}"#
        ))
        .expect("valid json");
        assert_eq!((c.memory, c.vcpus, c.pvm), (512 << 20, 2, PvmMode::Auto));
        assert!(c.validate().is_ok());
        let c = VmConfig::from_json(&format!(
            r#"{{"kernel": "{kp}", "memory": 67108864, "pvm": "off", "disks": [{{"path": "/d", "read_only": true}}], "command": ["echo", "a b"]}}"#
        ))
        .expect("valid json");
        assert_eq!(c.memory, 64 << 20);
        assert!(c.disks[0].read_only);
        assert_eq!(c.command, Some(vec!["echo".to_string(), "a b".to_string()]));
        let unknown = VmConfig::from_json(&format!(r#"{{"kernel": "{kp}", "memroy": 5}}"#));
        assert!(matches!(unknown, Err(ConfigError::Json(ref m)) if m.contains("memroy")));
        assert!(matches!(
            VmConfig::from_json(r#"{"memory": 5}"#),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            VmConfig::from_json(&format!(r#"{{"kernel": "{kp}", "memory": "lots"}}"#)),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn builder_validates() {
        let k = kernel_file();
        let c = VmConfig::builder(k.path())
            .memory_mib(128)
            .vcpus(2)
            .command(["true"])
            .build()
            .expect("valid");
        assert_eq!((c.memory, c.vcpus), (128 << 20, 2));
        assert!(matches!(
            VmConfig::builder(k.path()).memory_mib(0).build(),
            Err(ConfigError::MemoryTooSmall(0))
        ));
        assert!(matches!(
            VmConfig::builder(k.path())
                .command(Vec::<String>::new())
                .build(),
            Err(ConfigError::Command(_))
        ));
    }

    /// A file in the system temporary directory, removed on drop.
    mod tempfile_like {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempFile(PathBuf);
        impl TempFile {
            pub fn new(content: &[u8]) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ember-cfg-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, content).expect("temp file");
                Self(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
