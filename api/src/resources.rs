//! The VM's configuration as Firecracker's API builds it before `InstanceStart` (boot source,
//! drives, machine configuration, network interfaces, vsock), the checks Firecracker makes
//! at each `PUT` (files open, one root drive, distinct MACs), the mapping onto Ember's
//! [`vmm::VmConfig`], and the `GET /vm/config` shape (`FullVmConfiguration`).
//!
//! Mapping: `boot_args` is the kernel command line (Ember's `vmm::DEFAULT_CMDLINE` when
//! absent); a root drive is placed first (`/dev/vda`) and, as Firecracker does, `root=/dev/vda`
//! (or `root=PARTUUID=...`) with `ro`/`rw` is appended to the command line; a drive's id is
//! its virtio-blk serial (Firecracker's `GET_ID` answer too, at most 20 bytes); a network
//! interface is `NetConfig { tap: host_dev_name, mac: guest_mac }`; vsock is
//! `VsockConfig { cid: guest_cid, socket: uds_path }`; `huge_pages: Transparent` is
//! `VmConfig::thp`.

use std::fs::OpenOptions;

use serde_json::{json, Value};
use vmm::{DiskConfig, NetConfig, VmConfig, VsockConfig};

use crate::models::{self, BootSource, Drive, HugePages, MachineConfig, NetworkInterface, Vsock};

/// Errors in a piece of configuration, with Firecracker's prefixes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    /// `PUT /boot-source`.
    #[error("Boot source error: {0}")]
    BootSource(String),
    /// `PUT /drives`.
    #[error("Drive config error: {0}")]
    Drive(String),
    /// `PUT|PATCH /machine-config`.
    #[error("Machine config error: {0}")]
    Machine(String),
    /// `PUT /network-interfaces`.
    #[error("Network config error: {0}")]
    Net(String),
    /// `PUT /vsock`.
    #[error("Vsock config error: {0}")]
    Vsock(String),
}

/// Longest virtio-blk serial.
const SERIAL_MAX: usize = 20;

/// What `PUT` requests have configured so far.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// The kernel, initrd and command line.
    pub boot_source: Option<BootSource>,
    /// Drives, the root drive first.
    pub drives: Vec<Drive>,
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Network interfaces in the order they were added.
    pub nets: Vec<NetworkInterface>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
}

/// `e` and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Opens a file a client named without ever blocking (`O_NONBLOCK`: a FIFO would otherwise
/// hold the API until someone opened its other end) and only if it is a regular file or a
/// block device.
fn open_image(path: &str, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let t = f.metadata()?.file_type();
    if t.is_file() || t.is_block_device() {
        Ok(f)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

impl Resources {
    /// `PUT /boot-source`: the kernel and initrd must open; the command line must be
    /// printable ASCII.
    pub fn set_boot_source(&mut self, b: BootSource) -> Result<(), ResourceError> {
        open_image(&b.kernel_image_path, false).map_err(|e| {
            ResourceError::BootSource(format!(
                "The kernel file cannot be opened: {e} ({})",
                b.kernel_image_path
            ))
        })?;
        if let Some(i) = &b.initrd_path {
            open_image(i, false).map_err(|e| {
                ResourceError::BootSource(format!(
                    "The initrd file cannot be opened due to invalid path or invalid permissions. {e} ({i})"
                ))
            })?;
        }
        if let Some(a) = &b.boot_args {
            if !a.bytes().all(|c| (0x20..0x7f).contains(&c) || c == b'\t') {
                return Err(ResourceError::BootSource(
                    "The kernel command line is invalid: it may only hold printable ASCII".into(),
                ));
            }
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// `PUT /drives/{id}`: a new drive or a replacement of the one with this id; at most one
    /// root drive, kept first; the image must open for reading (and writing unless read-only).
    pub fn insert_drive(&mut self, d: Drive) -> Result<(), ResourceError> {
        let path = d.path_on_host.clone().unwrap_or_default();
        open_image(&path, !d.is_read_only.unwrap_or(false)).map_err(|e| {
            ResourceError::Drive(format!(
                "Unable to open the backing file {path} of drive {}: {e}",
                d.drive_id
            ))
        })?;
        let position = self.drives.iter().position(|x| x.drive_id == d.drive_id);
        let root = self.drives.first().filter(|x| x.is_root_device);
        if d.is_root_device && root.is_some() && position != Some(0) {
            return Err(ResourceError::Drive(
                "A root block device already exists!".into(),
            ));
        }
        if position.is_none() && self.virtio_devices() >= vmm::config::MAX_DISKS {
            return Err(ResourceError::Drive(format!(
                "Ember supports at most {} drives and network interfaces together",
                vmm::config::MAX_DISKS
            )));
        }
        if let Some(i) = position {
            self.drives.remove(i);
        }
        if d.is_root_device {
            self.drives.insert(0, d);
        } else {
            self.drives.push(d);
        }
        Ok(())
    }

    /// `PUT /machine-config` (or a `PATCH` applied to the current one).
    pub fn set_machine_config(&mut self, m: MachineConfig) -> Result<(), ResourceError> {
        if m.vcpu_count == 0 {
            return Err(ResourceError::Machine(
                "The number of vCPUs must be greater than 0.".into(),
            ));
        }
        if m.mem_size_mib == 0 {
            return Err(ResourceError::Machine(
                "The memory size (MiB) is either 0, or not a multiple of the configured page size."
                    .into(),
            ));
        }
        // Ember's own limits (vCPUs, memory against the host's).
        let mut trial = VmConfig::new("");
        trial.vcpus = m.vcpu_count;
        trial.memory = m.mem_size_mib.saturating_mul(1 << 20);
        trial
            .validate_machine()
            .map_err(|e| ResourceError::Machine(chain(&e)))?;
        self.machine = m;
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: the MAC must parse and be unused by another interface.
    pub fn insert_net(&mut self, n: NetworkInterface) -> Result<(), ResourceError> {
        let cfg = NetConfig {
            tap: n.host_dev_name.clone(),
            fd: None,
            mac: n.guest_mac.clone(),
        };
        let mac = cfg
            .mac_bytes(0)
            .map_err(|e| ResourceError::Net(chain(&e)))?;
        if n.guest_mac.is_some()
            && self.nets.iter().any(|x| {
                x.iface_id != n.iface_id
                    && x.guest_mac.as_ref().and_then(|m| {
                        NetConfig {
                            tap: String::new(),
                            fd: None,
                            mac: Some(m.clone()),
                        }
                        .mac_bytes(0)
                        .ok()
                    }) == Some(mac)
            })
        {
            return Err(ResourceError::Net(format!(
                "The MAC address is already in use: {}",
                n.guest_mac.as_deref().unwrap_or_default()
            )));
        }
        match self.nets.iter().position(|x| x.iface_id == n.iface_id) {
            Some(i) => self.nets[i] = n,
            None => {
                if self.virtio_devices() >= vmm::config::MAX_DISKS {
                    return Err(ResourceError::Net(format!(
                        "Ember supports at most {} drives and network interfaces together",
                        vmm::config::MAX_DISKS
                    )));
                }
                self.nets.push(n)
            }
        }
        Ok(())
    }

    /// virtio-mmio devices configured (each takes one of vmm's interrupt lines).
    fn virtio_devices(&self) -> usize {
        self.drives.len() + self.nets.len() + usize::from(self.vsock.is_some())
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, v: Vsock) -> Result<(), ResourceError> {
        if self.vsock.is_none() && self.virtio_devices() >= vmm::config::MAX_DISKS {
            return Err(ResourceError::Vsock(format!(
                "No interrupt line is left for a vsock device: drives and network interfaces use all {}",
                vmm::config::MAX_DISKS
            )));
        }
        VsockConfig {
            cid: v.guest_cid,
            socket: v.uds_path.clone().into(),
        }
        .validate()
        .map_err(|e| ResourceError::Vsock(chain(&e)))?;
        self.vsock = Some(v);
        Ok(())
    }

    /// The kernel command line the guest gets: `boot_args` (or Ember's default) and, for a
    /// root drive, `root=` with `ro`/`rw` as Firecracker appends them (before a `--`, after
    /// which words belong to init).
    pub fn cmdline(&self) -> String {
        let base = self
            .boot_source
            .as_ref()
            .and_then(|b| b.boot_args.clone())
            .unwrap_or_else(|| vmm::DEFAULT_CMDLINE.to_string());
        let Some(root) = self.drives.first().filter(|d| d.is_root_device) else {
            return base;
        };
        let root_args = format!(
            "root={} {}",
            match &root.partuuid {
                Some(u) => format!("PARTUUID={u}"),
                None => "/dev/vda".into(),
            },
            if root.is_read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            }
        );
        let words: Vec<&str> = base.split_whitespace().collect();
        match words.iter().position(|w| *w == "--") {
            Some(i) => format!(
                "{} {root_args} {}",
                words[..i].join(" "),
                words[i..].join(" ")
            )
            .trim()
            .to_string(),
            None => format!("{} {root_args}", words.join(" "))
                .trim()
                .to_string(),
        }
    }

    /// The Ember configuration these resources describe (`None` without a boot source).
    pub fn vm_config(&self) -> Option<VmConfig> {
        let boot = self.boot_source.as_ref()?;
        let mut c = VmConfig::new(&boot.kernel_image_path);
        c.initrd = boot.initrd_path.as_ref().map(Into::into);
        c.cmdline = Some(self.cmdline());
        c.memory = self.machine.mem_size_mib << 20;
        c.vcpus = self.machine.vcpu_count;
        c.thp = self.machine.huge_pages == HugePages::Transparent;
        c.disks = self
            .drives
            .iter()
            .map(|d| DiskConfig {
                path: d.path_on_host.clone().unwrap_or_default().into(),
                read_only: d.is_read_only.unwrap_or(false),
                serial: Some(serial(&d.drive_id)),
            })
            .collect();
        c.nets = self
            .nets
            .iter()
            .map(|n| NetConfig {
                tap: n.host_dev_name.clone(),
                fd: None,
                mac: n.guest_mac.clone(),
            })
            .collect();
        c.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            cid: v.guest_cid,
            socket: v.uds_path.clone().into(),
        });
        Some(c)
    }

    /// What a restored VM's configuration says, in this shape (for `GET /vm/config` and
    /// `GET /machine-config` after a snapshot load; the boot source stays empty, as in
    /// Firecracker).
    pub fn from_vm_config(c: &VmConfig) -> Self {
        Self {
            boot_source: None,
            drives: c
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| Drive {
                    drive_id: d.serial.clone().unwrap_or_else(|| format!("drive{i}")),
                    partuuid: None,
                    is_root_device: false,
                    cache_type: models::CacheType::Unsafe,
                    is_read_only: Some(d.read_only),
                    path_on_host: Some(d.path.display().to_string()),
                    rate_limiter: None,
                    io_engine: None,
                    socket: None,
                })
                .collect(),
            machine: MachineConfig {
                vcpu_count: c.vcpus,
                mem_size_mib: c.memory >> 20,
                huge_pages: if c.thp {
                    HugePages::Transparent
                } else {
                    HugePages::None
                },
                ..MachineConfig::default()
            },
            nets: c
                .nets
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkInterface {
                    iface_id: format!("eth{i}"),
                    host_dev_name: n.tap.clone(),
                    guest_mac: n.mac.clone(),
                    mtu: None,
                    rx_rate_limiter: None,
                    tx_rate_limiter: None,
                })
                .collect(),
            vsock: c.vsock.as_ref().map(|v| Vsock {
                vsock_id: None,
                guest_cid: v.cid,
                uds_path: v.socket.display().to_string(),
            }),
        }
    }

    /// Firecracker's `FullVmConfiguration` (`GET /vm/config`).
    pub fn full_config(&self) -> Value {
        json!({
            "balloon": null,
            "drives": self.drives,
            "boot-source": self.boot_source.clone().unwrap_or_default(),
            "cpu-config": null,
            "logger": null,
            "machine-config": self.machine,
            "metrics": null,
            "mmds-config": null,
            "network-interfaces": self.nets,
            "vsock": self.vsock,
            "entropy": null,
            "pmem": [],
            "memory-hotplug": null,
        })
    }
}

/// A drive id as a virtio-blk serial: its first 20 bytes (whole characters).
fn serial(id: &str) -> String {
    let mut s = String::new();
    for c in id.chars() {
        if s.len() + c.len_utf8() > SERIAL_MAX {
            break;
        }
        s.push(c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> String {
        let p = std::env::temp_dir().join(format!("ember-api-res-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).expect("temp file");
        p.display().to_string()
    }

    fn drive(id: &str, path: &str, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            partuuid: None,
            is_root_device: root,
            cache_type: models::CacheType::Unsafe,
            is_read_only: Some(false),
            path_on_host: Some(path.into()),
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    #[test]
    fn a_fifo_named_as_kernel_or_drive_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("ember-api-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let path = fifo.to_str().expect("utf-8").to_string();
        let mut r = Resources::default();
        let e = r
            .set_boot_source(BootSource {
                kernel_image_path: path.clone(),
                ..Default::default()
            })
            .expect_err("a FIFO is no kernel");
        assert!(chain(&e).contains("not a regular file"), "{}", chain(&e));
        assert!(open_image(&path, true).is_err(), "nor a drive");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_root_drive_is_first_and_unique() {
        let img = temp_file("img");
        let mut r = Resources::default();
        r.insert_drive(drive("data", &img, false)).expect("data");
        r.insert_drive(drive("rootfs", &img, true)).expect("root");
        assert_eq!(r.drives[0].drive_id, "rootfs");
        assert_eq!(
            r.insert_drive(drive("other", &img, true)),
            Err(ResourceError::Drive(
                "A root block device already exists!".into()
            ))
        );
        // Replacing the root drive, or making it a plain drive, is allowed.
        r.insert_drive(drive("rootfs", &img, true))
            .expect("same root again");
        r.insert_drive(drive("rootfs", &img, false))
            .expect("no longer root");
        assert_eq!(r.drives.len(), 2);
        assert!(r
            .insert_drive(drive("x", "/nonexistent/img", false))
            .is_err());
        let _ = std::fs::remove_file(img);
    }

    #[test]
    fn the_command_line_gets_the_root_as_firecracker_appends_it() {
        let img = temp_file("cmd");
        let mut r = Resources {
            boot_source: Some(BootSource {
                kernel_image_path: img.clone(),
                initrd_path: None,
                boot_args: Some("console=ttyS0 reboot=k".into()),
            }),
            ..Resources::default()
        };
        assert_eq!(r.cmdline(), "console=ttyS0 reboot=k");
        let mut d = drive("rootfs", &img, true);
        d.is_read_only = Some(true);
        r.drives.push(d);
        assert_eq!(r.cmdline(), "console=ttyS0 reboot=k root=/dev/vda ro");
        r.drives[0].partuuid = Some("1234-01".into());
        r.drives[0].is_read_only = None;
        if let Some(b) = r.boot_source.as_mut() {
            b.boot_args = Some("quiet -- single".into());
        }
        assert_eq!(r.cmdline(), "quiet root=PARTUUID=1234-01 rw -- single");
        let c = r.vm_config().expect("config");
        assert_eq!(c.disks[0].serial.as_deref(), Some("rootfs"));
        let _ = std::fs::remove_file(img);
        assert_eq!(serial("abcdefghijklmnopqrstuvwxyz"), "abcdefghijklmnopqrst");
    }

    #[test]
    fn machine_config_and_macs() {
        let mut r = Resources::default();
        let m = |v: u8, mem: u64| MachineConfig {
            vcpu_count: v,
            mem_size_mib: mem,
            ..MachineConfig::default()
        };
        assert!(r.set_machine_config(m(0, 128)).is_err());
        assert!(r.set_machine_config(m(1, 0)).is_err());
        r.set_machine_config(m(2, 256)).expect("valid");
        assert_eq!(r.machine.vcpu_count, 2);
        let net = |id: &str, mac: &str| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some(mac.into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        r.insert_net(net("a", "06:00:AC:10:00:02")).expect("first");
        assert!(r
            .insert_net(net("b", "06:00:ac:10:00:02"))
            .expect_err("same MAC")
            .to_string()
            .contains("already in use"));
        r.insert_net(net("a", "06:00:AC:10:00:03"))
            .expect("same id replaces");
        assert!(r.insert_net(net("c", "zz")).is_err());
        assert_eq!(r.nets.len(), 1);
    }
}
