//! The VMM side of the API: Firecracker's state machine (`vmm/src/rpc_interface.rs`: its
//! pre-boot and runtime controllers) over Ember's library. Before `InstanceStart` requests
//! accumulate a configuration ([`Resources`]); `InstanceStart` is `vmm::Vm::start_with_console`
//! and a snapshot load `vmm::Vm::restore_with`; afterwards only what Firecracker allows after
//! boot is served (pause, resume, snapshot create, Ctrl+Alt+Del, metrics flush, reads), and
//! everything else is answered "not supported after starting the microVM".
//!
//! It runs on the thread that owns the VM (the process's main thread): the API thread sends it
//! each request as an [`Event`] and waits for the answer, so requests are served one at a time
//! in arrival order, as Firecracker serves them. The same channel brings the VM's end and the
//! process's stop signals.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::seccomp::SeccompMode;
use vmm::{Console, RestoreOptions, Vm, VmExit, VmHandle};

use crate::http::Response;
use crate::metrics::MetricsSink;
use crate::models::{self, Supported};
use crate::resources::{chain, ResourceError, Resources};
use crate::routes::Action;

/// The Firecracker API version whose paths, bodies and rules Ember follows (its swagger).
pub const FIRECRACKER_API_VERSION: &str = "1.17.0-dev";

/// What reaches the controller.
pub enum Event {
    /// A request from the API thread, answered on the sender.
    Request(Box<Action>, Sender<Response>),
    /// The VM ended (sent by a watcher thread).
    VmEnded,
    /// The process got a stop signal.
    Signal(i32),
}

/// Errors of an action: the `fault_message` of a 400.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Allowed only after `InstanceStart`.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotPreBoot,
    /// Allowed only before `InstanceStart`.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotPostBoot,
    /// A piece of configuration.
    #[error(transparent)]
    Config(#[from] ResourceError),
    /// The start failed.
    #[error("Start microvm error: {0}")]
    Start(String),
    /// A snapshot could not be written.
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(String),
    /// A snapshot could not be loaded.
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(String),
    /// `PUT /logger`.
    #[error("Logger error: {0}")]
    Logger(String),
    /// `PUT /metrics`.
    #[error("Metrics error: {0}")]
    Metrics(String),
    /// A runtime operation failed.
    #[error("Internal VMM error: {0}")]
    Internal(String),
}

/// How the controller starts VMs.
pub struct ControllerOptions {
    /// seccomp for the VM's threads.
    pub seccomp: SeccompMode,
    /// A console marker to timestamp (for `--boot-timer`).
    pub console_marker: Option<String>,
    /// How long a guest gets to shut down after SIGINT/SIGTERM.
    pub stop_grace: Duration,
    /// The instance id `GET /` reports.
    pub instance_id: String,
    /// Makes the VM's console (the process's stdout and stdin) when a VM starts.
    pub console: Box<dyn FnMut() -> std::io::Result<Console>>,
}

/// How the process's VM life ended.
#[derive(Debug)]
pub struct Outcome {
    /// How the VM ended, if one ran.
    pub exit: Option<VmExit>,
    /// The first stop signal, if one came.
    pub signal: Option<i32>,
    /// The VM's exits over its life, where KVM counts them.
    pub exits: Option<vmm::ExitCounts>,
}

/// Metrics are written this often once the VM runs, as Firecracker does.
const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// The state machine.
pub struct Controller {
    opts: ControllerOptions,
    events: Sender<Event>,
    resources: Resources,
    /// A boot-specific resource was configured: a snapshot load is no longer allowed.
    boot_path: bool,
    vm: Option<VmHandle>,
    metrics: Option<MetricsSink>,
    next_metrics: Option<Instant>,
    signal: Option<i32>,
    force_stop_at: Option<Instant>,
    requests: u64,
    request_fails: u64,
}

impl Controller {
    /// A controller whose VM watcher reports on `events`.
    pub fn new(opts: ControllerOptions, events: Sender<Event>) -> Self {
        Self {
            opts,
            events,
            resources: Resources::default(),
            boot_path: false,
            vm: None,
            metrics: None,
            next_metrics: None,
            signal: None,
            force_stop_at: None,
            requests: 0,
            request_fails: 0,
        }
    }

    /// Serves events until the VM ends or a signal ends a process without a VM.
    pub fn run(mut self, events: Receiver<Event>) -> Outcome {
        loop {
            let deadline = [self.force_stop_at, self.next_metrics]
                .into_iter()
                .flatten()
                .min();
            let event = match deadline {
                Some(d) => match events.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return self.finish(),
                },
                None => match events.recv() {
                    Ok(e) => Some(e),
                    Err(_) => return self.finish(),
                },
            };
            match event {
                None => self.on_deadline(),
                Some(Event::Request(action, reply)) => {
                    let response = self.respond(*action);
                    let _ = reply.send(response);
                }
                Some(Event::VmEnded) => return self.finish(),
                Some(Event::Signal(sig)) => {
                    if self.on_signal(sig) {
                        return self.finish();
                    }
                }
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let exit = self.vm.as_mut().map(|h| h.wait());
        let exits = self.vm.as_ref().and_then(VmHandle::exit_counts);
        if let Some(m) = self.metrics.as_mut() {
            m.write(self.requests, self.request_fails, "Stopped", exits.as_ref());
        }
        Outcome {
            exit,
            signal: self.signal,
            exits,
        }
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.force_stop_at.is_some_and(|d| d <= now) {
            self.force_stop_at = None;
            log::warn!("the guest did not shut down in time: stopping it");
            if let Some(vm) = &self.vm {
                vm.stopper().kill();
            }
        }
        if self.next_metrics.is_some_and(|d| d <= now) {
            self.next_metrics = Some(now + METRICS_PERIOD);
            let state = self.state();
            let exits = self.vm.as_ref().and_then(VmHandle::exit_counts);
            if let Some(m) = self.metrics.as_mut() {
                m.write(self.requests, self.request_fails, state, exits.as_ref());
            }
        }
    }

    /// A stop signal: without a VM the process ends; SIGINT/SIGTERM ask the guest to shut
    /// down (Ctrl+Alt+Del) and stop it after the grace period or at the next signal; other
    /// signals stop it at once. Returns whether to end now.
    fn on_signal(&mut self, sig: i32) -> bool {
        let first = self.signal.is_none();
        self.signal.get_or_insert(sig);
        let Some(vm) = &self.vm else {
            return true;
        };
        let stopper = vm.stopper();
        let graceful = first
            && matches!(sig, libc::SIGINT | libc::SIGTERM)
            && !self.opts.stop_grace.is_zero()
            && !vm.is_paused();
        if graceful && stopper.request_shutdown() {
            log::info!(
                "asked the guest to shut down; stopping it in {:.1} s or at the next signal",
                self.opts.stop_grace.as_secs_f64()
            );
            self.force_stop_at = Some(Instant::now() + self.opts.stop_grace);
        } else {
            stopper.kill();
        }
        false
    }

    fn respond(&mut self, action: Action) -> Response {
        self.requests += 1;
        match self.handle(action) {
            Ok(None) => Response::no_content(),
            Ok(Some(v)) => Response::json(&v),
            Err(e) => {
                self.request_fails += 1;
                log::warn!("api: {e}");
                Response::fault(400, &e.to_string())
            }
        }
    }

    fn state(&self) -> &'static str {
        match &self.vm {
            None => "Not started",
            Some(vm) if vm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    /// Carries out one action; `Some` is the JSON of a 200.
    pub fn handle(&mut self, action: Action) -> Result<Option<Value>, ActionError> {
        let started = self.vm.is_some();
        match action {
            Action::GetInstanceInfo => Ok(Some(json!({
                "id": self.opts.instance_id,
                "state": self.state(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
                "app_name": "Ember",
            }))),
            Action::GetVersion => Ok(Some(json!({
                "firecracker_version": FIRECRACKER_API_VERSION,
                "ember_version": env!("CARGO_PKG_VERSION"),
            }))),
            Action::GetMachineConfig => Ok(Some(json!(self.resources.machine))),
            Action::GetFullConfig => Ok(Some(self.resources.full_config())),
            // Pre-boot only.
            _ if started && pre_boot_only(&action) => Err(ActionError::NotPostBoot),
            Action::PutBootSource(b) => {
                self.boot_path = true;
                Ok(self.resources.set_boot_source(b).map(|_| None)?)
            }
            Action::PutDrive(d) => {
                self.boot_path = true;
                Ok(self.resources.insert_drive(d).map(|_| None)?)
            }
            Action::PutMachineConfig(m) => {
                self.boot_path = true;
                Ok(self.resources.set_machine_config(m).map(|_| None)?)
            }
            Action::PatchMachineConfig(u) => {
                self.boot_path = true;
                let m = u.apply(&self.resources.machine);
                m.check()
                    .map_err(|e| ActionError::Config(ResourceError::Machine(e.0)))?;
                Ok(self.resources.set_machine_config(m).map(|_| None)?)
            }
            Action::PutNetworkInterface(n) => {
                self.boot_path = true;
                Ok(self.resources.insert_net(n).map(|_| None)?)
            }
            Action::PutVsock(v) => {
                self.boot_path = true;
                Ok(self.resources.set_vsock(v).map(|_| None)?)
            }
            Action::PutLogger(l) => crate::logger::configure(&l)
                .map(|_| None)
                .map_err(|e| ActionError::Logger(chain(&e))),
            Action::PutMetrics(m) => {
                if self.metrics.is_some() {
                    return Err(ActionError::Metrics(
                        "Reinitialization of metrics not allowed.".into(),
                    ));
                }
                let sink = MetricsSink::open(&m, &self.opts.instance_id)
                    .map_err(|e| ActionError::Metrics(chain(&e)))?;
                self.metrics = Some(sink);
                Ok(None)
            }
            Action::InstanceStart => self.start().map(|_| None),
            Action::LoadSnapshot(l) => self.load_snapshot(&l).map(|_| None),
            // Post-boot only.
            _ if !started => Err(ActionError::NotPreBoot),
            Action::PatchDrive(d) => {
                if !self
                    .resources
                    .drives
                    .iter()
                    .any(|x| x.drive_id == d.drive_id)
                {
                    return Err(ActionError::Config(ResourceError::Drive(format!(
                        "No drive with id {}",
                        d.drive_id
                    ))));
                }
                Ok(None)
            }
            Action::PatchNetworkInterface(n) => {
                if !self.resources.nets.iter().any(|x| x.iface_id == n.iface_id) {
                    return Err(ActionError::Config(ResourceError::Net(format!(
                        "No network interface with id {}",
                        n.iface_id
                    ))));
                }
                Ok(None)
            }
            Action::Pause => {
                let vm = self.running()?;
                vm.pause()
                    .map_err(|e| ActionError::Internal(chain(&e)))
                    .map(|_| None)
            }
            Action::Resume => {
                self.running()?.resume();
                Ok(None)
            }
            Action::SendCtrlAltDel => {
                if self.running()?.stopper().request_shutdown() {
                    Ok(None)
                } else {
                    Err(ActionError::Internal(
                        "The guest's i8042 keyboard is not ready (not enabled yet, or its buffer is full)".into(),
                    ))
                }
            }
            Action::FlushMetrics => {
                let state = self.state();
                let exits = self.vm.as_ref().and_then(VmHandle::exit_counts);
                if let Some(m) = self.metrics.as_mut() {
                    m.write(self.requests, self.request_fails, state, exits.as_ref());
                }
                Ok(None)
            }
            Action::CreateSnapshot(s) => self.create_snapshot(&s).map(|_| None),
        }
    }

    fn running(&self) -> Result<&VmHandle, ActionError> {
        self.vm.as_ref().ok_or(ActionError::NotPreBoot)
    }

    fn start(&mut self) -> Result<(), ActionError> {
        let mut config = self.resources.vm_config().ok_or_else(|| {
            ActionError::Start("Cannot start microvm without kernel configuration.".into())
        })?;
        config.seccomp = self.opts.seccomp;
        config.console_marker = self.opts.console_marker.clone();
        let console = (self.opts.console)()
            .map_err(|e| ActionError::Start(format!("Cannot set up the console: {e}")))?;
        let handle =
            Vm::start_with_console(config, console).map_err(|e| ActionError::Start(chain(&e)))?;
        self.started(handle);
        Ok(())
    }

    fn load_snapshot(&mut self, l: &models::SnapshotLoad) -> Result<(), ActionError> {
        if self.boot_path {
            return Err(ActionError::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            ));
        }
        let dir = std::path::Path::new(&l.snapshot_path);
        let mem = l.mem_file().map_err(|e| ActionError::LoadSnapshot(e.0))?;
        crate::snapshot::check_pair(dir, std::path::Path::new(mem))
            .map_err(|e| ActionError::LoadSnapshot(chain(&e)))?;
        // What the snapshot's machine is, for GET /vm/config and /machine-config.
        let mut saved = vmm::snapshot::read(dir)
            .map_err(|e| ActionError::LoadSnapshot(chain(&e)))
            .and_then(|s| {
                vmm::VmConfig::from_json(&s.config_json)
                    .map_err(|e| ActionError::LoadSnapshot(chain(&e)))
            })?;
        // A restore keeps the snapshot's memory backing: a request for another is refused,
        // not ignored.
        if l.huge_pages == Some(models::LoadHugePages::None) && saved.thp {
            return Err(ActionError::LoadSnapshot(
                "huge_pages None: this snapshot's memory is backed by transparent huge pages, \
                 and a load keeps the snapshot's backing"
                    .into(),
            ));
        }
        if l.vsock_override.is_some() && saved.vsock.is_none() {
            return Err(ActionError::LoadSnapshot(
                "vsock_override: the snapshot's VM has no vsock device".into(),
            ));
        }
        let console = (self.opts.console)()
            .map_err(|e| ActionError::LoadSnapshot(format!("Cannot set up the console: {e}")))?;
        let handle = Vm::restore_with(
            dir,
            console,
            RestoreOptions {
                command: None,
                seccomp: self.opts.seccomp,
                console_marker: self.opts.console_marker.clone(),
                paused: !l.resume_vm,
                vsock_socket: l.vsock_override.as_ref().map(|v| v.uds_path.clone().into()),
            },
        )
        .map_err(|e| ActionError::LoadSnapshot(chain(&e)))?;
        if let (Some(v), Some(o)) = (saved.vsock.as_mut(), l.vsock_override.as_ref()) {
            v.socket = o.uds_path.clone().into();
        }
        self.resources = Resources::from_vm_config(&saved);
        self.started(handle);
        Ok(())
    }

    fn create_snapshot(&mut self, s: &models::SnapshotCreate) -> Result<(), ActionError> {
        let vm = self.running()?;
        if !vm.is_paused() {
            return Err(ActionError::CreateSnapshot(
                "The microVM must be paused first (PATCH /vm {\"state\": \"Paused\"})".into(),
            ));
        }
        let dir = std::path::Path::new(&s.snapshot_path);
        let fail = |e: &dyn std::error::Error| ActionError::CreateSnapshot(chain(e));
        crate::snapshot::prepare_dir(dir).map_err(|e| fail(&e))?;
        vm.snapshot(dir).map_err(|e| fail(&e))?;
        crate::snapshot::link_memory(dir, std::path::Path::new(&s.mem_file_path))
            .map_err(|e| fail(&e))?;
        Ok(())
    }

    /// A VM runs: watch for its end, start the periodic metrics.
    fn started(&mut self, handle: VmHandle) {
        let waiter = handle.end_waiter();
        let events = self.events.clone();
        let seccomp = self.opts.seccomp;
        let spawned = std::thread::Builder::new()
            .name("ember-api-watch".into())
            .spawn(move || {
                if seccomp.filters() {
                    if let Err(e) = vmm::seccomp::apply(vmm::seccomp::ThreadKind::Main, seccomp) {
                        log::error!("api: VM watcher: {e}");
                    }
                }
                waiter.wait();
                let _ = events.send(Event::VmEnded);
            });
        if let Err(e) = spawned {
            log::error!("api: cannot watch the VM's end ({e}): stopping it");
            handle.stopper().kill();
            let _ = self.events.send(Event::VmEnded);
        }
        self.vm = Some(handle);
        if self.metrics.is_some() {
            self.next_metrics = Some(Instant::now() + METRICS_PERIOD);
        }
    }

    /// Applies a Firecracker configuration file (`--config-file`) and starts the VM, as
    /// Firecracker does: the same checks as the API's, one line on error.
    pub fn configure_from_file(&mut self, json: &str) -> Result<(), String> {
        let c: models::ConfigFile =
            serde_json::from_str(json).map_err(|e| format!("Invalid configuration file: {e}"))?;
        c.check().map_err(|e| e.0)?;
        let mut actions = Vec::new();
        actions.extend(c.logger.map(Action::PutLogger));
        actions.extend(c.metrics.map(Action::PutMetrics));
        if let Some(m) = c.machine_config {
            m.check().map_err(|e| e.0)?;
            actions.push(Action::PutMachineConfig(m));
        }
        actions.push(Action::PutBootSource(c.boot_source));
        for d in c.drives {
            d.check().map_err(|e| e.0)?;
            actions.push(Action::PutDrive(d));
        }
        for n in c.network_interfaces {
            n.check().map_err(|e| e.0)?;
            actions.push(Action::PutNetworkInterface(n));
        }
        actions.extend(c.vsock.map(Action::PutVsock));
        actions.push(Action::InstanceStart);
        for a in actions {
            self.handle(a).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Actions Firecracker allows only before the VM starts.
fn pre_boot_only(a: &Action) -> bool {
    matches!(
        a,
        Action::PutBootSource(_)
            | Action::PutMachineConfig(_)
            | Action::PatchMachineConfig(_)
            | Action::PutVsock(_)
            | Action::PutLogger(_)
            | Action::PutMetrics(_)
            | Action::InstanceStart
            | Action::LoadSnapshot(_)
            // Hot-plugging: Firecracker needs PCI for it; Ember has none.
            | Action::PutDrive(_)
            | Action::PutNetworkInterface(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Controller {
        let (tx, _rx) = std::sync::mpsc::channel();
        Controller::new(
            ControllerOptions {
                seccomp: SeccompMode::Off,
                console_marker: None,
                stop_grace: Duration::from_secs(1),
                instance_id: "anonymous-instance".into(),
                console: Box::new(|| Ok(Console::default())),
            },
            tx,
        )
    }

    fn err(c: &mut Controller, a: Action) -> String {
        c.handle(a).expect_err("refused").to_string()
    }

    #[test]
    fn order_rules_before_the_start() {
        let mut c = controller();
        for a in [
            Action::Pause,
            Action::Resume,
            Action::SendCtrlAltDel,
            Action::FlushMetrics,
            Action::CreateSnapshot(models::SnapshotCreate {
                snapshot_type: models::SnapshotType::Full,
                snapshot_path: "/s".into(),
                mem_file_path: "/m".into(),
            }),
        ] {
            assert_eq!(
                err(&mut c, a),
                "The requested operation is not supported before starting the microVM."
            );
        }
        assert_eq!(
            err(&mut c, Action::InstanceStart),
            "Start microvm error: Cannot start microvm without kernel configuration."
        );
        let info = c
            .handle(Action::GetInstanceInfo)
            .expect("info")
            .expect("json");
        assert_eq!(info["state"], "Not started");
        assert_eq!(info["id"], "anonymous-instance");
        let m = c
            .handle(Action::GetMachineConfig)
            .expect("cfg")
            .expect("json");
        assert_eq!(m["mem_size_mib"], 128);
        c.handle(Action::PatchMachineConfig(models::MachineConfigUpdate {
            vcpu_count: Some(2),
            ..Default::default()
        }))
        .expect("patch");
        assert_eq!(c.resources.machine.vcpu_count, 2);
        // A boot resource was configured: no snapshot load any more.
        let load = models::SnapshotLoad {
            snapshot_path: "/s".into(),
            mem_file_path: Some("/m".into()),
            mem_backend: None,
            enable_diff_snapshots: false,
            track_dirty_pages: false,
            resume_vm: false,
            network_overrides: vec![],
            vsock_override: None,
            clock_realtime: false,
            huge_pages: None,
        };
        assert!(err(&mut c, Action::LoadSnapshot(load))
            .contains("not allowed after configuring boot-specific resources"));
    }

    #[test]
    fn a_missing_kernel_is_refused_at_put() {
        let mut c = controller();
        let e = err(
            &mut c,
            Action::PutBootSource(models::BootSource {
                kernel_image_path: "/nonexistent/vmlinux".into(),
                initrd_path: None,
                boot_args: None,
            }),
        );
        assert!(
            e.starts_with("Boot source error: The kernel file cannot be opened"),
            "{e}"
        );
        let full = c.handle(Action::GetFullConfig).expect("cfg").expect("json");
        assert_eq!(full["boot-source"]["kernel_image_path"], "");
        assert_eq!(full["drives"], json!([]));
    }

    #[test]
    fn a_config_file_with_an_unsupported_section_is_refused() {
        let mut c = controller();
        let e = c
            .configure_from_file(r#"{"boot-source": {"kernel_image_path": "/k"}, "mmds-config": {"network_interfaces": ["eth0"]}}"#)
            .expect_err("refused");
        assert!(e.contains("mmds-config"), "{e}");
        let e = c.configure_from_file("{").expect_err("refused");
        assert!(e.starts_with("Invalid configuration file"), "{e}");
    }
}
