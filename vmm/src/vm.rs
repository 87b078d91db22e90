//! Building and running one VM: [`Vm::start`] validates the configuration, then builds in
//! steps (guest memory and the KVM VM, the kernel, the devices, the vCPUs), starts one thread
//! per vCPU and a VMM thread for the event loop, and returns a [`VmHandle`]. One owner,
//! `RunningVm`, holds every part from the first thread on and releases them in order.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::info;

use crate::boot::{load_initrd, load_kernel, write_boot_structures};
use crate::config::{VmConfig, DEFAULT_CMDLINE};
use crate::console::{pipe, Console, ConsoleInput, ConsoleWriter};
use crate::control::PauseError;
use crate::control::VmControl;
use crate::device_manager::{create_block_devices, create_boot_timer, create_legacy_devices};
use crate::event_loop::{create_manager, run_until_stop, stop_vcpus};
use crate::exit::ExitReason;
use crate::kvm_vm::KvmVm;
use crate::memory::{create_guest_memory, use_transparent_huge_pages, GuestMemoryMmap};
use crate::seccomp::SeccompMode;
use crate::snapshot::SnapshotInfo;
use crate::vcpu::{install_kick_handler, Vcpu, VcpuBootConfig};
use crate::Error;

/// Timestamps of one VM's life (monotonic clock).
#[derive(Clone, Copy, Debug)]
pub struct Timestamps {
    /// `Vm::start` was called.
    pub start: Instant,
    /// Configuration validated.
    pub config_validated: Instant,
    /// Guest memory mapped, the KVM VM created with it (memory slots, split irqchip).
    pub memory_ready: Instant,
    /// Kernel, initramfs and boot structures loaded.
    pub kernel_loaded: Instant,
    /// First `KVM_RUN` of any vCPU.
    pub first_run: Option<Instant>,
    /// First byte of guest console output.
    pub first_output: Option<Instant>,
    /// First appearance of the configured console marker.
    pub console_marker: Option<Instant>,
    /// The guest's boot-timer signal (byte 123 at guest-physical 0xC000_0000).
    pub boot_timer: Option<Instant>,
    /// The VM was asked to stop: by the guest (reset, power-off, exit status, a fault) or by
    /// the host (stop, kill, a signal). From here to [`Self::exit`] is teardown, most of it
    /// the host kernel destroying the KVM VM.
    pub stop_requested: Option<Instant>,
    /// The VM ended: every vCPU joined and the VM, its devices and its memory released.
    pub exit: Instant,
}

/// How a VM ended.
#[derive(Clone, Debug)]
pub struct VmExit {
    /// Why.
    pub reason: ExitReason,
    /// When things happened.
    pub timestamps: Timestamps,
}

struct Done {
    result: Mutex<Option<VmExit>>,
    cond: Condvar,
}

/// The one owner of a running VM's parts. Dropping it stops and joins every vCPU thread
/// first, then releases the event loop with the devices, the buses, the KVM VM and guest
/// memory, in that order (the fields' order), on every path: a start error after the first
/// vCPU thread, a thread that cannot be spawned, a panic, or the normal end.
struct RunningVm {
    control: Arc<VmControl>,
    vcpu_threads: Vec<JoinHandle<()>>,
    /// The handle's way to the parts a snapshot reads: emptied here, so the handle holds no
    /// part of the VM (its memory, its disks' locks) once it has ended.
    snapshot_sources: Arc<Mutex<Option<SnapshotSources>>>,
    console_out: Arc<Mutex<crate::console::ConsoleOutputHandler>>,
    em: crate::event_loop::Manager,
    buses: Arc<crate::vcpu::IoBuses>,
    /// The vCPUs' statistics descriptors, closed once they stop (they hold the KVM VM).
    exit_stats: Arc<crate::kvm_stats::ExitStats>,
    /// Held, not used: the KVM VM and then guest memory must outlive every vCPU thread.
    _vm: KvmVm,
    _mem: crate::memory::GuestMemoryMmap,
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        stop_vcpus(&self.control, std::mem::take(&mut self.vcpu_threads));
        self.exit_stats.finish();
        self.snapshot_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // The guest's last words (its exit status line, a panic) are in the console buffer:
        // out with them, unless nobody reads the console.
        self.console_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(CONSOLE_STALL);
    }
}

/// How long the end of a VM waits for a console sink that takes nothing.
const CONSOLE_STALL: Duration = Duration::from_millis(200);

/// A vCPU thread's body: a panic ends the VM with a host error instead of leaving it running
/// without this vCPU.
fn run_vcpu(vcpu: Vcpu, buses: &crate::vcpu::IoBuses, control: &VmControl, seccomp: SeccompMode) {
    let id = vcpu.id();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vcpu.run(buses, control, seccomp)
    }));
    if ran.is_err() {
        control.request_exit(ExitReason::HostError(format!("vcpu{id} panicked")));
    }
}

/// Publishes how the VM ended when the VMM thread finishes, however it finishes.
struct EndReporter {
    control: Arc<VmControl>,
    done: Arc<Done>,
    times: (Instant, Instant, Instant, Instant),
}

impl Drop for EndReporter {
    fn drop(&mut self) {
        let ctl = &self.control;
        if std::thread::panicking() {
            ctl.request_exit(ExitReason::HostError("the VMM thread panicked".into()));
        }
        let (start, config_validated, memory_ready, kernel_loaded) = self.times;
        let timestamps = Timestamps {
            start,
            config_validated,
            memory_ready,
            kernel_loaded,
            first_run: ctl.first_run(),
            first_output: ctl.first_output.get().copied(),
            console_marker: ctl.marker.get().copied(),
            boot_timer: ctl.boot_timer.get().copied(),
            stop_requested: ctl.stop_requested.get().copied(),
            exit: Instant::now(),
        };
        let reason = ctl.reason().unwrap_or(ExitReason::Stopped);
        let mut r = self.done.result.lock().unwrap_or_else(|p| p.into_inner());
        *r = Some(VmExit { reason, timestamps });
        self.done.cond.notify_all();
    }
}

/// What the caller of a restore decides (never the snapshot file).
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The command the restored guest's init runs (a snapshot taken while it waited for one).
    pub command: Option<Vec<String>>,
    /// seccomp for the VM's threads.
    pub seccomp: SeccompMode,
    /// A console marker to timestamp.
    pub console_marker: Option<String>,
    /// The host socket of a restored vsock device, instead of the snapshot's (each clone of
    /// one snapshot needs its own; the original's may still be in use).
    pub vsock_socket: Option<std::path::PathBuf>,
    /// Start paused: no guest instruction runs until [`VmHandle::resume`] (a Firecracker
    /// snapshot load without `resume_vm`). The restore returns once the VM is paused.
    pub paused: bool,
}

/// Entry point: starts VMs.
pub struct Vm;

impl Vm {
    /// Starts a VM with no console.
    pub fn start(config: VmConfig) -> Result<VmHandle, Error> {
        Self::start_with_console(config, Console::default())
    }

    /// Restores the VM saved in `dir` by [`VmHandle::snapshot`] with `console`: no kernel is
    /// loaded and no boot structure written; guest memory is the snapshot's memory file mapped
    /// copy-on-write (read lazily, shared with other VMs restored from it until written); the
    /// devices are made anew with fresh eventfds, irqfds, ioeventfds and routes and given their
    /// saved state, queues kicked and pending interrupts raised again; the vCPUs continue where
    /// they were. Every check (format, checksum, CPU vendor and features, memory file, disks)
    /// is made before anything runs.
    pub fn restore(dir: impl AsRef<std::path::Path>, console: Console) -> Result<VmHandle, Error> {
        Self::restore_with(dir, console, RestoreOptions::default())
    }

    /// [`Self::restore`], and the guest's init (snapshotted while it waited for a command,
    /// [`crate::VmConfig::wait_for_command`]) runs `command` (the VM's status is then the
    /// command's), or without one its shell.
    pub fn restore_with_command(
        dir: impl AsRef<std::path::Path>,
        console: Console,
        command: Option<Vec<String>>,
    ) -> Result<VmHandle, Error> {
        Self::restore_with(
            dir,
            console,
            RestoreOptions {
                command,
                ..RestoreOptions::default()
            },
        )
    }

    /// [`Self::restore`] with the restoring caller's choices ([`RestoreOptions`]): what the
    /// VM's threads may do and what it runs come from the caller, never from the file.
    pub fn restore_with(
        dir: impl AsRef<std::path::Path>,
        console: Console,
        options: RestoreOptions,
    ) -> Result<VmHandle, Error> {
        let RestoreOptions {
            command,
            seccomp,
            console_marker,
            vsock_socket,
            paused,
        } = options;
        let dir = dir.as_ref();
        let start = Instant::now();
        let snap = crate::snapshot::read(dir)?;
        let config: VmConfig = serde_json::from_str(&snap.config_json)
            .map_err(|e| crate::snapshot::SnapshotError::Decode(e.to_string()))?;
        let mut config = config;
        config.seccomp = seccomp;
        config.console_marker = console_marker;
        match (config.vsock.as_mut(), vsock_socket) {
            (Some(v), Some(path)) => v.socket = path,
            (None, Some(_)) => {
                return Err(Error::SnapshotMismatch(
                    "a vsock socket was given, but the snapshot's VM has no vsock device".into(),
                ))
            }
            _ => {}
        }
        config.validate_machine()?;
        // Guest RAM must be laid out as a VM of this size is: nothing a tampered file says
        // may map memory over the MMIO gap or elsewhere.
        let layout: Vec<(u64, u64)> = snap
            .memory
            .iter()
            .map(|r| (r.guest_address, r.size))
            .collect();
        if layout != arch::x86_64::memory::ram_regions(config.memory) {
            return Err(Error::SnapshotMismatch("the guest memory layout".into()));
        }
        if snap.vcpus.len() != usize::from(config.vcpus) || snap.vcpus.is_empty() {
            return Err(Error::SnapshotMismatch("the number of vCPUs".into()));
        }
        let virtio_devices =
            config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some());
        if snap.transports.len() != virtio_devices {
            return Err(Error::SnapshotMismatch(
                "the number of virtio devices".into(),
            ));
        }
        let config_validated = Instant::now();
        install_kick_handler().map_err(|e| Error::Signal(e.errno()))?;
        let mem = crate::snapshot::map_memory(dir, &snap)?;
        let vm = KvmVm::new(&mem)?;
        let mut model = vm
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Vm(crate::kvm_vm::VmError::CreateVm(e)))?;
        arch::x86_64::cpuid::filter_cpuid(
            model.as_mut_slice(),
            arch::x86_64::cpuid::CpuidParams {
                vcpu_id: 0,
                vcpu_count: config.vcpus,
                pvm_compat: crate::pvm::use_compat(config.pvm),
            },
        );
        crate::snapshot::check_host(&snap, model.as_slice())?;
        let memory_ready = Instant::now();
        let mut clock = snap.clock;
        // KVM_SET_CLOCK takes no flags but KVM_CLOCK_REALTIME, which is not used here.
        clock.flags = 0;
        vm.fd
            .set_clock(&clock)
            .map_err(|e| Error::Clock("set", e))?;
        let control = Arc::new(VmControl::new().map_err(Error::EventFd)?);
        let legacy = crate::device_manager::LegacyStates {
            ioapic: &snap.ioapic,
            serial: &snap.serial,
            i8042: &snap.i8042,
        };
        // A guest snapshotted while its init waited for a command gets one now: the command's
        // line, or an empty line (the init then runs its shell).
        let typed = if config.wait_for_command {
            let mut line = match &command {
                Some(argv) => crate::command::encode(argv)?.into_bytes(),
                None => Vec::new(),
            };
            // A new identity for each restore: a seed for the guest's random pool and an id.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            line.extend_from_slice(
                format!(
                    " {}{} {}{}.{:09} {}{:016x}\n",
                    crate::command::SEED_PARAM,
                    hex(&random_bytes::<32>()),
                    crate::command::TIME_PARAM,
                    now.as_secs(),
                    now.subsec_nanos(),
                    crate::command::CLONE_PARAM,
                    u64::from_le_bytes(random_bytes::<8>())
                )
                .as_bytes(),
            );
            line
        } else if command.is_some() {
            return Err(Error::SnapshotMismatch(
                "it was not taken while the guest's init waited for a command".into(),
            ));
        } else {
            Vec::new()
        };
        let (devices, console_in_writer, _) =
            build_devices(&config, &vm, &mem, &control, console, Some(legacy), typed)?;
        for (t, st) in devices.stateful.transports.iter().zip(&snap.transports) {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(st)
                .map_err(|e| Error::SnapshotMismatch(format!("a virtio device: {e}")))?;
        }
        let vcpus = snap
            .vcpus
            .iter()
            .enumerate()
            .map(|(id, st)| {
                let mut v = Vcpu::new_bare(&vm, id as u8)?;
                v.restore_state(st)?;
                Ok(v)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let restored = Instant::now();
        if paused {
            // Every thread parks before its first guest instruction.
            control.request_pause();
        }
        let handle = launch(
            Parts {
                file_backed: true,
                config,
                control,
                vm,
                mem,
                devices,
                vcpus,
                console_in_writer,
            },
            (start, config_validated, memory_ready, restored),
        )?;
        if paused {
            handle.pause()?;
        }
        Ok(handle)
    }

    /// Starts a VM whose console is `console`. Every error in the configuration, the images
    /// or the host comes back here, before any guest code runs.
    pub fn start_with_console(config: VmConfig, console: Console) -> Result<VmHandle, Error> {
        let start = Instant::now();
        config.validate()?;
        let config_validated = Instant::now();
        install_kick_handler().map_err(|e| Error::Signal(e.errno()))?;
        let pvm_compat = crate::pvm::use_compat(config.pvm);

        let (mem, vm) = build_memory(&config)?;
        let memory_ready = Instant::now();
        let (kernel, initrd) = load_guest(&config, &mem)?;
        let kernel_loaded = Instant::now();
        let control = Arc::new(VmControl::new().map_err(Error::EventFd)?);
        let (devices, console_in_writer, device_cmdline) =
            build_devices(&config, &vm, &mem, &control, console, None, Vec::new())?;
        let cmdline = compose_cmdline(&config, &device_cmdline, pvm_compat);
        write_boot_structures(&mem, config.memory, config.vcpus, &kernel, &cmdline, initrd)?;
        let vcpus = build_vcpus(&config, &vm, &kernel, pvm_compat)?;
        launch(
            Parts {
                file_backed: false,
                config,
                control,
                vm,
                mem,
                devices,
                vcpus,
                console_in_writer,
            },
            (start, config_validated, memory_ready, kernel_loaded),
        )
    }
}

/// `N` bytes from the kernel's random source (`getrandom`); zeros only if it fails, which it
/// does not on a Linux that runs KVM.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: `b` is a valid buffer of N bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        log::warn!("getrandom failed: a restored guest gets a weak seed");
    }
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Step 1: guest memory (with transparent huge pages if asked) and the KVM VM over it.
fn build_memory(config: &VmConfig) -> Result<(GuestMemoryMmap, KvmVm), Error> {
    let mem = create_guest_memory(config.memory)?;
    if config.thp {
        let aligned = use_transparent_huge_pages(&mem)?;
        if aligned < vm_memory::GuestMemoryBackend::num_regions(&mem) {
            log::warn!(
                "guest memory is not 2 MiB aligned on the host: huge pages are used for \
                 host memory only, not for the guest's mappings"
            );
        }
    }
    let vm = KvmVm::new(&mem)?;
    Ok((mem, vm))
}

/// Step 2: the kernel and the initramfs in guest memory.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
) -> Result<
    (
        crate::boot::LoadedKernel,
        Option<arch::x86_64::boot_params::Initrd>,
    ),
    Error,
> {
    let kernel = load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(p) => Some(load_initrd(mem, config.memory, &kernel, p)?),
        None => None,
    };
    Ok((kernel, initrd))
}

/// Step 3: the devices (legacy ones, the boot timer, then each virtio device through
/// `attach_virtio_mmio`). Returns them, the console input pipe's writing end (for
/// [`ConsoleInput::Pipe`]) and the kernel command-line entries announcing the devices.
fn build_devices(
    config: &VmConfig,
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    control: &Arc<VmControl>,
    console: Console,
    restore: Option<crate::device_manager::LegacyStates<'_>>,
    typed: Vec<u8>,
) -> Result<(crate::device_manager::Devices, Option<File>, Vec<String>), Error> {
    let (console_in, console_in_writer) = match console.input {
        ConsoleInput::None => (None, None),
        ConsoleInput::File(f) => (Some(f), None),
        ConsoleInput::Pipe => {
            let (r, w) = pipe().map_err(Error::EventFd)?;
            (Some(r), Some(w))
        }
    };
    let console_buffer = Arc::new(
        devices::legacy::ConsoleBuffer::new(crate::console::CONSOLE_BUFFER_BYTES)
            .map_err(Error::EventFd)?,
    );
    let mut devices = create_legacy_devices(
        vm,
        control.clone(),
        crate::device_manager::ConsoleParts {
            writer: ConsoleWriter::new(console_buffer.clone())
                .with_timing(control.clone(), config.console_marker.as_deref()),
            buffer: console_buffer,
            output: console.output,
            input: console_in,
            typed,
        },
        config.vcpus,
        restore,
    )?;
    create_boot_timer(control, &mut devices)?;
    let mut mmio_alloc = crate::device_manager::MmioAllocator::new();
    let mut cmdline = create_block_devices(vm, mem, &mut mmio_alloc, &config.disks, &mut devices)?;
    cmdline.extend(crate::device_manager::create_net_devices(
        vm,
        mem,
        &mut mmio_alloc,
        &config.nets,
        &mut devices,
    )?);
    if let Some(v) = &config.vsock {
        cmdline.push(crate::device_manager::create_vsock_device(
            vm,
            mem,
            &mut mmio_alloc,
            v.cid,
            &v.socket,
            &mut devices,
        )?);
    }
    Ok((devices, console_in_writer, cmdline))
}

/// Step 4: the vCPUs, the boot processor at the kernel's entry.
fn build_vcpus(
    config: &VmConfig,
    vm: &KvmVm,
    kernel: &crate::boot::LoadedKernel,
    pvm_compat: bool,
) -> Result<Vec<Vcpu>, Error> {
    let boot = VcpuBootConfig {
        protocol: kernel.protocol,
        entry: kernel.entry,
        count: config.vcpus,
        pvm_compat,
    };
    Ok((0..config.vcpus)
        .map(|id| Vcpu::new(vm, id, &boot))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The parts of a VM ready to run, from a boot or a restore.
struct Parts {
    /// Guest memory maps a snapshot's file (a restored VM).
    file_backed: bool,
    config: VmConfig,
    control: Arc<VmControl>,
    vm: KvmVm,
    mem: GuestMemoryMmap,
    devices: crate::device_manager::Devices,
    vcpus: Vec<Vcpu>,
    console_in_writer: Option<File>,
}

/// Step 5: the threads. From here on one owner holds everything.
fn launch(parts: Parts, times: (Instant, Instant, Instant, Instant)) -> Result<VmHandle, Error> {
    let Parts {
        file_backed,
        config,
        control,
        vm,
        mem,
        devices,
        vcpus,
        console_in_writer,
    } = parts;
    if let Some(first) = vcpus.first() {
        // Before any seccomp filter: finding the MSR list takes system ioctls.
        crate::vcpu::snapshot_msrs(&vm, first);
    }
    // Exit counters for `VmHandle::exit_counts` (none if any vCPU has no statistics).
    let exit_stats = Arc::new(crate::kvm_stats::ExitStats::new(
        vcpus
            .iter()
            .map(Vcpu::open_stats)
            .collect::<std::io::Result<Vec<_>>>()
            .unwrap_or_else(|e| {
                log::debug!("no KVM statistics: {e}");
                Vec::new()
            }),
    ));
    let snapshot_sources = Arc::new(Mutex::new(Some(SnapshotSources {
        file_backed,
        vm_fd: vm.fd.clone(),
        mem: mem.clone(),
        config: config.clone(),
        devices: devices.stateful.clone(),
    })));
    let em = create_manager(&control, devices.subscribers).map_err(Error::EventManager)?;
    let i8042 = devices.i8042;
    let vsock_socket = devices.vsock_socket;
    let seccomp = config.seccomp;
    if seccomp.filters() {
        // Compile now so that a broken filter fails the start, not a thread.
        crate::seccomp::program(crate::seccomp::ThreadKind::Vcpu, seccomp)?;
        crate::seccomp::program(crate::seccomp::ThreadKind::Vmm, seccomp)?;
    }
    // From here on `running` owns every part: any early return drops it, which stops and
    // joins the vCPU threads started so far before memory goes.
    let mut running = RunningVm {
        control: control.clone(),
        snapshot_sources: snapshot_sources.clone(),
        vcpu_threads: Vec::with_capacity(vcpus.len()),
        console_out: devices.console_out,
        em,
        buses: Arc::new(devices.buses),
        exit_stats: exit_stats.clone(),
        _vm: vm,
        _mem: mem,
    };
    for vcpu in vcpus {
        let (b, c) = (running.buses.clone(), control.clone());
        let name = format!("ember-vcpu{}", vcpu.id());
        let t = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_vcpu(vcpu, &b, &c, seccomp))
            .map_err(Error::Thread)?;
        // Kickable at once: if a later spawn fails, this one is stopped with the others
        // (an application processor waits in KVM_RUN for a start-up IPI that never comes).
        control.add_vcpu_thread(std::os::unix::thread::JoinHandleExt::as_pthread_t(&t));
        running.vcpu_threads.push(t);
    }

    let done = Arc::new(Done {
        result: Mutex::new(None),
        cond: Condvar::new(),
    });
    let (ctl, dn) = (control.clone(), done.clone());
    let boot_times = times;
    // If the thread cannot start, the closure and `running` in it are dropped: the vCPUs
    // are stopped and joined before this returns.
    let vmm_thread = std::thread::Builder::new()
        .name("ember-vmm".into())
        .spawn(move || {
            // Reports the end even if this thread panics: `wait()` never hangs.
            let reporter = EndReporter {
                control: ctl.clone(),
                done: dn,
                times: boot_times,
            };
            let mut running = running;
            if seccomp.filters() {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm, seccomp) {
                    ctl.request_exit(ExitReason::HostError(format!("event loop: {e}")));
                }
            }
            let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_until_stop(&mut running.em, &ctl)
            }));
            if looped.is_err() {
                ctl.request_exit(ExitReason::HostError("the event loop panicked".into()));
            }
            // vCPUs stopped and joined, then devices, the VM and its memory released.
            drop(running);
            drop(reporter);
        })
        .map_err(Error::Thread)?;
    Ok(VmHandle {
        control,
        done,
        thread: Some(vmm_thread),
        console_input: console_in_writer,
        i8042,
        snapshot_sources,
        snapshot_lock: Mutex::new(()),
        _vsock_socket: vsock_socket,
        exit_stats,
    })
}

/// A running (or ended) VM. Dropping it kills the VM and releases everything it holds.
pub struct VmHandle {
    control: Arc<VmControl>,
    done: Arc<Done>,
    thread: Option<JoinHandle<()>>,
    console_input: Option<File>,
    i8042: Arc<Mutex<devices::legacy::I8042>>,
    snapshot_sources: Arc<Mutex<Option<SnapshotSources>>>,
    /// One snapshot at a time.
    snapshot_lock: Mutex<()>,
    /// Removes the vsock socket file when the handle goes (not on the VM's own threads,
    /// whose seccomp filters allow no `unlink`).
    _vsock_socket: Option<crate::device_manager::SocketFile>,
    /// The VM's exit counts (the descriptors close at the VM's end).
    exit_stats: Arc<crate::kvm_stats::ExitStats>,
}

/// What a snapshot reads besides the vCPUs: the VM's clock, memory, configuration, devices.
struct SnapshotSources {
    /// Guest memory maps an earlier snapshot's file (a restored VM).
    file_backed: bool,
    vm_fd: Arc<kvm_ioctls::VmFd>,
    mem: GuestMemoryMmap,
    config: VmConfig,
    devices: crate::device_manager::StatefulDevices,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("ended", &self.has_ended())
            .finish_non_exhaustive()
    }
}

impl VmHandle {
    /// The writing end of the console input pipe, if the console was started with
    /// [`ConsoleInput::Pipe`]. Can be taken once.
    pub fn console_input(&mut self) -> Option<File> {
        self.console_input.take()
    }

    /// Waits until the VM ends.
    pub fn wait(&mut self) -> VmExit {
        let r = {
            let mut g = self.done.result.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(r) = g.as_ref() {
                    break r.clone();
                }
                g = self.done.cond.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        self.join();
        r
    }

    /// Waits at most `timeout` for the VM to end; `None` if it is still running (it keeps
    /// running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<VmExit> {
        let deadline = Instant::now() + timeout;
        let r = {
            let mut g = self.done.result.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(r) = g.as_ref() {
                    break r.clone();
                }
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                g = self
                    .done
                    .cond
                    .wait_timeout(g, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        self.join();
        Some(r)
    }

    /// Asks the guest to shut down (Ctrl+Alt+Del on its keyboard, which Linux turns into a
    /// signal to init) and waits up to `grace` for it; then stops it by force. Returns how
    /// the VM ended: the guest's own reason if it complied, [`ExitReason::Stopped`] if not.
    pub fn stop(&mut self, grace: Duration) -> VmExit {
        if !self.has_ended() && self.stopper().request_shutdown() {
            if let Some(exit) = self.wait_timeout(grace) {
                return exit;
            }
        }
        self.kill()
    }

    /// Pauses the VM: returns once every vCPU is out of the guest with the exit it was in
    /// completed, the guest's kvmclock told, and the event loop has finished the device
    /// requests in flight. The guest's memory and devices do not change until [`Self::resume`].
    /// Fails if the VM has ended, or (and keeps running) if it did not pause within 10 s.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.control.pause(Duration::from_secs(10))
    }

    /// Lets a paused VM continue exactly where it was.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// The VM's exits so far, summed over its vCPUs, from KVM's statistics (counted by the
    /// kernel, so free for the run loop); after the VM's end, its last counts. None where the
    /// kernel keeps none.
    pub fn exit_counts(&self) -> Option<crate::kvm_stats::ExitCounts> {
        self.exit_stats.counts()
    }

    /// Whether the console marker of the configuration (`VmConfig::console_marker`) has
    /// appeared on the guest's console.
    pub fn console_marker_seen(&self) -> bool {
        self.control.marker.get().is_some()
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Writes a snapshot of the VM into `dir` (see [`crate::snapshot`]): pauses it if it runs,
    /// saves every vCPU, the clock, the devices and guest memory, and lets it run on. The VM
    /// can then be restored from `dir`, as often as wanted, by [`Vm::restore`].
    pub fn snapshot(&self, dir: impl AsRef<std::path::Path>) -> Result<SnapshotInfo, Error> {
        let _one = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let was_paused = self.is_paused();
        if !was_paused {
            self.pause()?;
        }
        let r = self.write_snapshot(dir.as_ref());
        if !was_paused {
            self.resume();
        }
        r
    }

    fn write_snapshot(&self, dir: &std::path::Path) -> Result<SnapshotInfo, Error> {
        let vcpus = self.control.vcpu_states(Duration::from_secs(10))?;
        let sources = self
            .snapshot_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let src = sources
            .as_ref()
            .ok_or(Error::Pause(crate::control::PauseError::Ended))?;
        let clock = src.vm_fd.get_clock().map_err(|e| Error::Clock("read", e))?;
        let d = &src.devices;
        fn locked<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|p| p.into_inner())
        }
        let transports: Vec<_> = d.transports.iter().map(|t| locked(t).state()).collect();
        // A TAP given as a descriptor is reopened by its name on restore: the number means
        // nothing to another process.
        let mut config = src.config.clone();
        let tap_names = transports.iter().filter_map(|t| match &t.device {
            devices::virtio::VirtioDeviceState::Net(n) => Some(n.tap.clone()),
            _ => None,
        });
        for (net, name) in config.nets.iter_mut().zip(tap_names) {
            if net.fd.take().is_some() {
                net.tap = name;
            }
        }
        let mut snap = crate::snapshot::Snapshot {
            config_json: serde_json::to_string(&config)
                .map_err(|e| crate::snapshot::SnapshotError::Encode(e.to_string()))?,
            cpu_vendor: crate::snapshot::host_cpu_vendor(),
            clock,
            vcpus,
            ioapic: locked(&d.ioapic).state(),
            serial: locked(&d.serial).state(),
            i8042: locked(&d.i8042).state(),
            transports,
            memory: Vec::new(),
        };
        let info = crate::snapshot::write(dir, &mut snap, &src.mem, src.file_backed)?;
        // A stop while the files were written lets the event loop run on: what was read may
        // not be one moment of the VM.
        if self.control.should_stop() || !self.control.is_paused() {
            let _ = std::fs::remove_file(dir.join(crate::snapshot::STATE_FILE));
            return Err(Error::Pause(crate::control::PauseError::Ended));
        }
        Ok(info)
    }

    /// Stops the VM at once (its vCPUs are kicked out of the guest) and waits for the end.
    pub fn kill(&mut self) -> VmExit {
        self.control.request_exit(ExitReason::Stopped);
        self.wait()
    }

    /// Whether the VM has ended.
    pub fn has_ended(&self) -> bool {
        self.done.result.lock().map(|g| g.is_some()).unwrap_or(true)
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.control.request_exit(ExitReason::Stopped);
            self.join();
        }
    }
}

/// A cloneable remote control that can stop a VM from any thread (a signal handler thread,
/// a watchdog) without holding its [`VmHandle`].
#[derive(Clone)]
pub struct VmStopper {
    control: Arc<VmControl>,
    i8042: Arc<Mutex<devices::legacy::I8042>>,
}

impl VmStopper {
    /// Stops the VM at once; its handle's `wait` then returns [`ExitReason::Stopped`].
    pub fn kill(&self) {
        self.control.request_exit(ExitReason::Stopped);
    }

    /// Asks the guest to shut down: types Ctrl+Alt+Del on its keyboard (the project's init
    /// then ends its processes, syncs, unmounts its disks and powers off). Returns at once;
    /// `false` if the keys could not be typed (the guest has not enabled its keyboard, or its
    /// buffer is full). Whoever calls this decides how long to wait before [`Self::kill`].
    pub fn request_shutdown(&self) -> bool {
        if self.control.reason().is_some() {
            return false;
        }
        self.i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_ctrl_alt_del()
    }

    /// Whether the VM has been asked to stop, by the guest or the host.
    pub fn is_stopping(&self) -> bool {
        self.control.reason().is_some()
    }
}

impl VmHandle {
    /// A remote control for this VM.
    pub fn stopper(&self) -> VmStopper {
        VmStopper {
            control: self.control.clone(),
            i8042: self.i8042.clone(),
        }
    }
}

/// A cloneable way to wait for a VM's end from another thread while its [`VmHandle`] stays
/// with its owner (an API server that answers requests while the VM runs).
#[derive(Clone)]
pub struct VmEndWaiter {
    done: Arc<Done>,
}

impl VmEndWaiter {
    /// Waits until the VM ends and returns how. The owner still calls [`VmHandle::wait`]
    /// (which then returns at once) to join the VM's threads.
    pub fn wait(&self) -> VmExit {
        let mut g = self.done.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            g = self.done.cond.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl VmHandle {
    /// A waiter for this VM's end, for another thread.
    pub fn end_waiter(&self) -> VmEndWaiter {
        VmEndWaiter {
            done: self.done.clone(),
        }
    }
}

/// The command line the guest gets: the user's (or the default), the disks' virtio-mmio
/// entries, `root=/dev/vda` when the first disk is the root, and the PVM options.
fn compose_cmdline(config: &VmConfig, disk_entries: &[String], pvm_compat: bool) -> String {
    let user = config.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    // Everything after a `--` word goes to init, so Ember's parameters go before it. (By hand
    // rather than with linux-loader's `Cmdline`, which refuses the tabs Linux and Ember's
    // configuration accept.)
    let (kernel_part, init_part) = match user.split_whitespace().position(|w| w == "--") {
        Some(i) => {
            let words: Vec<&str> = user.split_whitespace().collect();
            (words[..i].join(" "), Some(words[i + 1..].join(" ")))
        }
        None => (user.to_string(), None),
    };
    let mut cmdline = kernel_part;
    for e in disk_entries {
        cmdline.push(' ');
        cmdline.push_str(e);
    }
    if let Some(argv) = &config.command {
        // Validation has checked that it encodes.
        if let Ok(p) = crate::command::encode(argv) {
            cmdline.push(' ');
            cmdline.push_str(&p);
        }
    } else if config.wait_for_command {
        cmdline.push(' ');
        cmdline.push_str(crate::command::WAIT_PARAM);
    }
    let names_root = cmdline.split_whitespace().any(|w| w.starts_with("root="));
    if let Some(first) = config.disks.first() {
        if config.initrd.is_none() && !names_root {
            cmdline.push_str(if first.read_only {
                " root=/dev/vda ro"
            } else {
                " root=/dev/vda rw"
            });
        }
    }
    if pvm_compat {
        info!(
            "kvm-pvm host: giving the guest the PVM compatibility CPU model and options ({})",
            arch::x86_64::cpuid::PVM_GUEST_CMDLINE
        );
        cmdline.push(' ');
        cmdline.push_str(arch::x86_64::cpuid::PVM_GUEST_CMDLINE);
    }
    if let Some(init) = init_part {
        cmdline.push_str(" -- ");
        cmdline.push_str(&init);
    }
    cmdline.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskConfig;

    #[test]
    fn command_line_composition() {
        let mut c = VmConfig::new("/k");
        c.cmdline = Some("console=ttyS0".into());
        assert_eq!(compose_cmdline(&c, &[], false), "console=ttyS0");
        c.disks.push(DiskConfig {
            path: "/a".into(),
            read_only: true,
            serial: None,
        });
        let e = vec!["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        assert_eq!(
            compose_cmdline(&c, &e, false),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda ro"
        );
        c.cmdline = Some("root=/dev/vdb".into());
        assert_eq!(
            compose_cmdline(&c, &e, false),
            "root=/dev/vdb virtio_mmio.device=4K@0xd0000000:5"
        );
        c.initrd = Some("/i".into());
        c.cmdline = Some("x".into());
        assert!(!compose_cmdline(&c, &e, true).contains("root="));
        assert!(compose_cmdline(&c, &e, true).ends_with(arch::x86_64::cpuid::PVM_GUEST_CMDLINE));
        c.cmdline = None;
        assert!(compose_cmdline(&c, &[], false).starts_with(DEFAULT_CMDLINE));
        // Words after `--` belong to init: Ember's parameters go before them, and a `root=`
        // there does not count.
        c.initrd = None;
        c.cmdline = Some("console=ttyS0 -- single root=/dev/x".into());
        assert_eq!(
            compose_cmdline(&c, &e, false),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda ro -- single root=/dev/x"
        );
    }
}
