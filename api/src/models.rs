//! The JSON bodies of Firecracker's API, as its swagger definitions name them
//! (`src/firecracker/swagger/firecracker.yaml`: `BootSource`, `Drive`, `PartialDrive`,
//! `MachineConfiguration`, `NetworkInterface`, `Vsock`, `Logger`, `Metrics`,
//! `InstanceActionInfo`, `Vm`, `SnapshotCreateParams`, `SnapshotLoadParams`,
//! `FullVmConfiguration`), with Firecracker's field names and defaults. Unknown fields are
//! refused (`deny_unknown_fields`), as Firecracker refuses them.
//!
//! A field Ember cannot honour is refused by [`Supported::check`] with a message naming it,
//! unless its value is the default (or null) that changes nothing; see the README's
//! "Firecracker-compatible API" for the list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request field or value Ember does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

fn unsupported(what: impl std::fmt::Display) -> Unsupported {
    Unsupported(format!("{what} is not supported by Ember"))
}

/// What a body must satisfy beyond its JSON shape: no field Ember would have to ignore.
pub trait Supported {
    /// `Err` naming the first field Ember cannot honour.
    fn check(&self) -> Result<(), Unsupported>;
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Host path of the initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// The kernel command line; Ember's default when absent.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// A token bucket of a rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds.
    pub size: u64,
    /// Initial burst.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill.
    pub refill_time: u64,
}

/// Firecracker's `RateLimiter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill time.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill time.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Whether it limits anything: Firecracker makes no bucket of one with a zero size or
    /// refill time.
    pub fn limits(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(|b| b.size > 0 && b.refill_time > 0)
    }
}

fn check_limiter(limiter: &Option<RateLimiter>, what: &str) -> Result<(), Unsupported> {
    match limiter {
        Some(l) if l.limits() => Err(unsupported(format!("{what} (a rate limiter)"))),
        _ => Ok(()),
    }
}

/// A drive's caching strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker's default: the device offers no flush. Ember's disks always offer and
    /// honour flush (`fdatasync`), which is safer; accepted as the default.
    #[default]
    Unsafe,
    /// Flushes reach the host disk: what Ember's virtio-blk does.
    Writeback,
}

/// A drive's I/O engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O: what Ember does.
    #[default]
    Sync,
    /// io_uring: not in Ember.
    Async,
}

/// `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (the path's last segment).
    pub drive_id: String,
    /// The root partition's UUID (`root=PARTUUID=`), only with `is_root_device`.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Whether the guest mounts it as its root filesystem.
    pub is_root_device: bool,
    /// Caching strategy.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Read-only for the guest.
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// The image on the host.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// I/O rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine.
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// A vhost-user-block backend's socket.
    #[serde(default)]
    pub socket: Option<String>,
}

impl Supported for Drive {
    fn check(&self) -> Result<(), Unsupported> {
        if self.socket.is_some() {
            return Err(unsupported("drives' socket (vhost-user-block)"));
        }
        if self.path_on_host.is_none() {
            return Err(Unsupported(
                "drives' path_on_host is required (Ember has no vhost-user-block)".into(),
            ));
        }
        if self.io_engine == Some(IoEngine::Async) {
            return Err(unsupported("drives' io_engine Async"));
        }
        check_limiter(&self.rate_limiter, "drives' rate_limiter")
    }
}

/// `PATCH /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's id.
    pub drive_id: String,
    /// A new backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// A new rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

impl Supported for PartialDrive {
    fn check(&self) -> Result<(), Unsupported> {
        if self.path_on_host.is_some() {
            return Err(unsupported(
                "drives' path_on_host update after start (a disk cannot be swapped)",
            ));
        }
        check_limiter(&self.rate_limiter, "drives' rate_limiter")
    }
}

/// Firecracker's static CPU templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// How guest memory is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages (Ember's `--thp off`).
    #[default]
    None,
    /// `madvise(MADV_HUGEPAGE)` (Ember's `--thp on`).
    Transparent,
    /// hugetlbfs 2 MiB pages: not in Ember.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's default guest memory (MiB).
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: bool,
    /// A static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking (for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Guest memory backing.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl Supported for MachineConfig {
    fn check(&self) -> Result<(), Unsupported> {
        if self.smt {
            return Err(unsupported("machine-config smt=true"));
        }
        if let Some(t) = self.cpu_template.filter(|t| *t != CpuTemplate::None) {
            return Err(unsupported(format!("machine-config cpu_template {t:?}")));
        }
        if self.track_dirty_pages {
            return Err(unsupported(
                "machine-config track_dirty_pages=true (Ember has no diff snapshots)",
            ));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M {
            return Err(unsupported("machine-config huge_pages 2M (hugetlbfs)"));
        }
        Ok(())
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct MachineConfigUpdate {
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    #[serde(default)]
    pub smt: Option<bool>,
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// Whether it changes nothing (Firecracker answers "Empty PATCH request.").
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `base` with this update applied.
    pub fn apply(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            cpu_template: match self.cpu_template {
                Some(CpuTemplate::None) => None,
                Some(t) => Some(t),
                None => base.cpu_template,
            },
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// MTU offered to the guest (`VIRTIO_NET_F_MTU`).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl Supported for NetworkInterface {
    fn check(&self) -> Result<(), Unsupported> {
        if self.mtu.is_some() {
            return Err(unsupported("network-interfaces' mtu"));
        }
        check_limiter(&self.rx_rate_limiter, "network-interfaces' rx_rate_limiter")?;
        check_limiter(&self.tx_rate_limiter, "network-interfaces' tx_rate_limiter")
    }
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl Supported for PartialNetworkInterface {
    fn check(&self) -> Result<(), Unsupported> {
        check_limiter(&self.rx_rate_limiter, "network-interfaces' rx_rate_limiter")?;
        check_limiter(&self.tx_rate_limiter, "network-interfaces' tx_rate_limiter")
    }
}

/// `PUT /vsock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated in Firecracker, and without effect there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host Unix socket.
    pub uds_path: String,
}

/// A log level, case-insensitive as in Firecracker (`Warning` and `Warn` alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub enum Level {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown log level `{s}`, expected Off, Error, Warning, Info, Debug or Trace"
                )))
            }
        })
    }
}

impl From<Level> for log::LevelFilter {
    fn from(l: Level) -> Self {
        match l {
            Level::Off => Self::Off,
            Level::Error => Self::Error,
            Level::Warning => Self::Warn,
            Level::Info => Self::Info,
            Level::Debug => Self::Debug,
            Level::Trace => Self::Trace,
        }
    }
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// A file or named pipe for the log (created if missing).
    #[serde(default)]
    pub log_path: Option<String>,
    /// The most detailed level written.
    #[serde(default)]
    pub level: Option<Level>,
    /// Write each line's level.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Write each line's source file and line.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only lines from modules whose path starts with this.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A file or named pipe for the metrics lines (created if missing).
    pub metrics_path: String,
    /// Put the instance id on each line.
    #[serde(default)]
    pub emit_id: bool,
    /// Key-value pairs put on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// `InstanceActionInfo.action_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Write the metrics now.
    FlushMetrics,
    /// Boot the configured VM.
    InstanceStart,
    /// Ctrl+Alt+Del on the guest's keyboard.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmState {
    /// Pause every vCPU.
    Paused,
    /// Let them run.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateBody {
    /// The wanted state.
    pub state: VmState,
}

/// Snapshot kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// Everything (Ember writes the memory file sparsely).
    #[default]
    Full,
    /// Only memory dirtied since the last snapshot: not in Ember.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the state goes (Ember: its snapshot directory).
    pub snapshot_path: String,
    /// Where the memory goes (Ember: a hard link to the directory's memory file).
    pub mem_file_path: String,
}

impl Supported for SnapshotCreate {
    fn check(&self) -> Result<(), Unsupported> {
        if self.snapshot_type == SnapshotType::Diff {
            return Err(unsupported("snapshot_type Diff"));
        }
        Ok(())
    }
}

/// `MemoryBackend.backend_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// A file with the guest's memory.
    File,
    /// A userfaultfd page-fault handler: not in Ember.
    Uffd,
}

/// `MemoryBackend`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// The file (or socket).
    pub backend_path: String,
    /// Its kind.
    pub backend_type: MemBackendType,
}

/// `NetworkOverride`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `VsockOverride`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `SnapshotLoadParams.huge_pages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[allow(missing_docs)]
pub enum LoadHugePages {
    #[default]
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The state (Ember: a snapshot directory).
    pub snapshot_path: String,
    /// The memory file (deprecated form).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated dirty page tracking.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Dirty page tracking.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Run the VM once loaded (else it stays paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// TAP devices to use instead of the snapshot's.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// Another vsock socket.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot.
    #[serde(default)]
    pub clock_realtime: bool,
    /// Memory backing for the restored VM.
    #[serde(default)]
    pub huge_pages: Option<LoadHugePages>,
}

impl SnapshotLoad {
    /// The memory file: `mem_file_path` or a `File` backend; exactly one of the two, as
    /// Firecracker requires (its messages).
    pub fn mem_file(&self) -> Result<&str, Unsupported> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(_), Some(_)) => Err(Unsupported(
                "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"
                    .into(),
            )),
            (None, None) => Err(Unsupported(
                "missing field: either `mem_backend` or `mem_file_path` is required".into(),
            )),
            (Some(p), None) => Ok(p),
            (None, Some(b)) => Ok(&b.backend_path),
        }
    }
}

impl Supported for SnapshotLoad {
    fn check(&self) -> Result<(), Unsupported> {
        self.mem_file()?;
        if self
            .mem_backend
            .as_ref()
            .is_some_and(|b| b.backend_type == MemBackendType::Uffd)
        {
            return Err(unsupported("mem_backend backend_type Uffd"));
        }
        if self.track_dirty_pages || self.enable_diff_snapshots {
            return Err(unsupported(
                "track_dirty_pages/enable_diff_snapshots=true (Ember has no diff snapshots)",
            ));
        }
        if !self.network_overrides.is_empty() {
            return Err(unsupported("network_overrides"));
        }
        if self.clock_realtime {
            return Err(unsupported("clock_realtime=true"));
        }
        match self.huge_pages {
            None | Some(LoadHugePages::Snapshot) | Some(LoadHugePages::None) => Ok(()),
            Some(h) => Err(unsupported(format!("huge_pages {h:?} for a snapshot load"))),
        }
    }
}

/// Firecracker's configuration file (`--config-file`), the `FullVmConfiguration` shape with
/// kebab-case section names. Sections Ember has no device for are refused unless null.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct ConfigFile {
    pub boot_source: BootSource,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub logger: Option<Logger>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(default)]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(default)]
    pub entropy: Option<serde_json::Value>,
    #[serde(default)]
    pub pmem: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl Supported for ConfigFile {
    fn check(&self) -> Result<(), Unsupported> {
        let sections = [
            ("balloon", self.balloon.is_some()),
            ("cpu-config", self.cpu_config.is_some()),
            ("mmds-config", self.mmds_config.is_some()),
            ("entropy", self.entropy.is_some()),
            ("pmem", self.pmem.as_ref().is_some_and(|p| !p.is_empty())),
            ("memory-hotplug", self.memory_hotplug.is_some()),
        ];
        if let Some((name, _)) = sections.iter().find(|(_, set)| *set) {
            return Err(unsupported(format!("the {name} section")));
        }
        Ok(())
    }
}

/// Parses a JSON body into `T`, with Firecracker's message for a body that does not fit.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        parse_body::<T>(json.as_bytes()).expect_err("must fail")
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let e = err::<BootSource>(r#"{"kernel_image_path": "/k", "kernel_args": "x"}"#);
        assert!(e.contains("unknown field `kernel_args`"), "{e}");
        assert!(e.starts_with("An error occurred when deserializing the json body"));
        let e = err::<MachineConfig>(r#"{"vcpu_count": "two", "mem_size_mib": 128}"#);
        assert!(e.contains("invalid type: string \"two\""), "{e}");
        let e = err::<MachineConfig>(r#"{"vcpu_count": 300, "mem_size_mib": 128}"#);
        assert!(e.contains("300"), "{e}");
        let e = err::<MachineConfig>(r#"{"vcpu_count": 1}"#);
        assert!(e.contains("missing field `mem_size_mib`"), "{e}");
        let e = err::<Drive>(r#"{"drive_id": "a", "is_root_device": true, "cache_type": "Lazy"}"#);
        assert!(e.contains("unknown variant `Lazy`"), "{e}");
        let e = err::<InstanceAction>(r#"{"action_type": "Reboot"}"#);
        assert!(e.contains("unknown variant `Reboot`"), "{e}");
        assert!(err::<BootSource>("{not json").contains("key must be a string"));
        assert!(err::<VmStateBody>("").contains("EOF"));
    }

    #[test]
    fn defaults_are_firecrackers() {
        let m: MachineConfig =
            parse_body(br#"{"vcpu_count": 2, "mem_size_mib": 256}"#).expect("valid");
        assert_eq!(
            (m.smt, m.track_dirty_pages, m.huge_pages),
            (false, false, HugePages::None)
        );
        assert_eq!(
            serde_json::to_value(MachineConfig::default()).expect("json"),
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"})
        );
        let d: Drive = parse_body(br#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}"#).expect("valid");
        assert_eq!(d.cache_type, CacheType::Unsafe);
        assert!(d.check().is_ok());
        let l: Logger = parse_body(br#"{"level": "warning"}"#).expect("valid");
        assert_eq!(l.level, Some(Level::Warning));
    }

    #[test]
    fn what_ember_cannot_honour_is_refused_by_name_and_defaults_pass() {
        let drive = |extra: &str| -> Drive {
            parse_body(
                format!(
                    r#"{{"drive_id": "d", "path_on_host": "/d", "is_root_device": false{extra}}}"#
                )
                .as_bytes(),
            )
            .expect("valid json")
        };
        assert!(drive(r#", "io_engine": "Sync", "rate_limiter": null"#)
            .check()
            .is_ok());
        // An empty or zero-size limiter limits nothing in Firecracker either.
        assert!(drive(r#", "rate_limiter": {}"#).check().is_ok());
        assert!(
            drive(r#", "rate_limiter": {"ops": {"size": 0, "refill_time": 100}}"#)
                .check()
                .is_ok()
        );
        let e = drive(r#", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}"#).check();
        assert!(e.expect_err("refused").0.contains("rate_limiter"));
        let e = drive(r#", "io_engine": "Async""#).check();
        assert!(e.expect_err("refused").0.contains("io_engine Async"));
        let e = drive(r#", "socket": "/vhost.sock""#).check();
        assert!(e.expect_err("refused").0.contains("socket"));
        let m = |j: &str| -> MachineConfig { parse_body(j.as_bytes()).expect("json") };
        assert!(m(r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None", "huge_pages": "Transparent"}"#).check().is_ok());
        for (j, name) in [
            (
                r#"{"vcpu_count": 2, "mem_size_mib": 64, "smt": true}"#,
                "smt",
            ),
            (
                r#"{"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "T2"}"#,
                "cpu_template",
            ),
            (
                r#"{"vcpu_count": 2, "mem_size_mib": 64, "track_dirty_pages": true}"#,
                "track_dirty_pages",
            ),
            (
                r#"{"vcpu_count": 2, "mem_size_mib": 64, "huge_pages": "2M"}"#,
                "huge_pages",
            ),
        ] {
            assert!(m(j).check().expect_err(j).0.contains(name), "{j}");
        }
        let n: NetworkInterface =
            parse_body(br#"{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 9000}"#)
                .expect("json");
        assert!(n.check().expect_err("mtu").0.contains("mtu"));
        let s: SnapshotCreate = parse_body(
            br#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        )
        .expect("json");
        assert!(s.check().expect_err("diff").0.contains("Diff"));
    }

    #[test]
    fn snapshot_load_wants_exactly_one_memory_source() {
        let l = |j: &str| -> SnapshotLoad { parse_body(j.as_bytes()).expect("json") };
        assert!(l(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#)
            .check()
            .is_ok());
        assert!(l(r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}"#).check().is_ok());
        assert!(l(r#"{"snapshot_path": "/s"}"#)
            .check()
            .expect_err("none")
            .0
            .contains("missing field"));
        assert!(l(r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#)
            .check().expect_err("two").0.contains("too many fields"));
        assert!(l(r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#)
            .check().expect_err("uffd").0.contains("Uffd"));
        assert!(l(r#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}]}"#)
            .check().expect_err("overrides").0.contains("network_overrides"));
    }

    #[test]
    fn config_file_sections() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "drives": [], "balloon": null, "pmem": []}"#,
        )
        .expect("json");
        assert!(c.check().is_ok());
        let c: ConfigFile = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": {"amount_mib": 1}}"#,
        )
        .expect("json");
        assert!(c.check().expect_err("balloon").0.contains("balloon"));
        let e = serde_json::from_str::<ConfigFile>(
            r#"{"boot-source": {"kernel_image_path": "/k"}, "frobnicate": 1}"#,
        );
        assert!(e.expect_err("unknown").to_string().contains("frobnicate"));
    }
}
