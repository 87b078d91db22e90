//! vCPUs: creation and boot configuration (registers, CPUID, MSRs, FPU, LAPIC LINT pins from
//! the `arch` crate), the run loop each vCPU thread executes, and the exit handler.
//!
//! The run loop is the hot path: it allocates nothing, takes no lock but the one of the device
//! being accessed, and makes no system call beyond `KVM_RUN`. Port and MMIO exits go to the
//! [`IoBuses`]; anything that ends the VM is reported to the [`VmControl`].
//!
//! Other threads stop a vCPU by setting the stop flag and sending it [`kick_signal`] once: the
//! handler sets `immediate_exit` in the thread's `kvm_run`, so a `KVM_RUN` in the guest or
//! about to enter it returns `EINTR`, and the loop then sees the flag (KVM API, §4.4
//! `immediate_exit`). A kick cannot be lost, so stopping needs no re-kicking or polling.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use kvm_bindings::{CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, trace, warn};

use arch::x86_64::cpuid::{filter_cpuid, CpuidParams};
use arch::x86_64::regs::{boot_fpu, boot_regs, configure_sregs, set_lint, BootProtocol};
use devices::bus::Bus;

use crate::control::VmControl;
use crate::seccomp::{SeccompMode, ThreadKind};

/// Test-only hook: with this variable set to `vcpu`, each vCPU thread makes a forbidden
/// system call right after installing its seccomp filter (the process must die of it).
pub const SELFTEST_ENV: &str = "EMBER_SECCOMP_SELFTEST";
use crate::exit::ExitReason;
use crate::kvm_vm::KvmVm;

/// The port-I/O and MMIO buses the vCPUs dispatch to.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("Failed to create vCPU {id}")]
    Create {
        /// vCPU index.
        id: u8,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A configuration ioctl failed.
    #[error("Failed to set {what} of vCPU {id}")]
    Configure {
        /// vCPU index.
        id: u8,
        /// Which state.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("Failed to build the MSR list")]
    Msrs,
}

/// Boot-time settings shared by all vCPUs.
#[derive(Clone, Copy, Debug)]
pub struct VcpuBootConfig {
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// Entry point.
    pub entry: u64,
    /// Number of vCPUs.
    pub count: u8,
    /// Apply the PVM compatibility CPU model.
    pub pvm_compat: bool,
}

/// A vCPU's state as KVM holds it, as plain data (for snapshots).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// CPUID as set.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// Multiprocessing state (running, halted, waiting for a start-up IPI).
    pub mp_state: kvm_bindings::kvm_mp_state,
    /// General registers.
    pub regs: kvm_bindings::kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_bindings::kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_bindings::kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_bindings::kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_bindings::kvm_debugregs,
    /// The local APIC.
    pub lapic: kvm_bindings::kvm_lapic_state,
    /// MSRs (those of KVM's list this host lets a VMM read).
    pub msrs: Vec<kvm_bindings::kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    pub events: kvm_bindings::kvm_vcpu_events,
}

static SNAPSHOT_MSRS: OnceLock<Vec<u32>> = OnceLock::new();

/// The MSRs a snapshot saves: KVM's list (`KVM_GET_MSR_INDEX_LIST`), less those this host
/// refuses to read, found once per process on a vCPU before any guest runs (the vCPU
/// threads' filters have no system ioctls).
pub fn snapshot_msrs(vm: &KvmVm, vcpu: &Vcpu) -> &'static [u32] {
    let vcpu = &vcpu.fd;
    SNAPSHOT_MSRS.get_or_init(|| {
        let Ok(all) = vm.kvm.get_msr_index_list() else {
            return Vec::new();
        };
        all.as_slice()
            .iter()
            .copied()
            .filter(|&index| {
                Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                    index,
                    ..Default::default()
                }])
                .ok()
                .is_some_and(|mut m| vcpu.get_msrs(&mut m).is_ok_and(|n| n == 1))
            })
            .collect()
    })
}

/// One vCPU, owned by its thread once running.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    /// The CPUID set (what the guest sees; kvm-pvm's `KVM_GET_CPUID2` answers otherwise).
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
}

/// The host's supported CPUID, asked of KVM once per process (about 0.35 ms per call on the
/// hosts measured; the answer never changes) and copied for each vCPU.
fn supported_cpuid(vm: &KvmVm) -> Result<CpuId, kvm_ioctls::Error> {
    static SUPPORTED: OnceLock<CpuId> = OnceLock::new();
    if let Some(c) = SUPPORTED.get() {
        return Ok(c.clone());
    }
    let c = vm.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    Ok(SUPPORTED.get_or_init(|| c).clone())
}

impl Vcpu {
    /// Creates vCPU `id` and sets its boot state.
    pub fn new(vm: &KvmVm, id: u8, boot: &VcpuBootConfig) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        let cfg = |what| move |source| VcpuError::Configure { id, what, source };

        let mut cpuid = supported_cpuid(vm).map_err(cfg("CPUID"))?;
        filter_cpuid(
            cpuid.as_mut_slice(),
            CpuidParams {
                vcpu_id: id,
                vcpu_count: boot.count,
                pvm_compat: boot.pvm_compat,
            },
        );
        if let Ok(khz) = fd.get_tsc_khz() {
            let leaf = arch::x86_64::cpuid::timing_leaf(khz);
            if let Some(e) = cpuid
                .as_mut_slice()
                .iter_mut()
                .find(|e| e.function == leaf.function)
            {
                *e = leaf;
            } else if cpuid.push(leaf).is_err() {
                debug!("vcpu{id}: no room for the timing CPUID leaf");
            }
        }
        fd.set_cpuid2(&cpuid).map_err(cfg("CPUID"))?;
        let cpuid_set = cpuid.as_slice().to_vec();

        let msrs = Msrs::from_entries(&arch::x86_64::msrs::boot_msr_entries())
            .map_err(|_| VcpuError::Msrs)?;
        let written = fd.set_msrs(&msrs).map_err(cfg("MSRs"))?;
        if written != msrs.as_slice().len() {
            warn!(
                "vcpu{id}: only {written} of {} boot MSRs accepted",
                msrs.as_slice().len()
            );
        }

        // Only the boot processor starts at the entry point. The others keep KVM's reset
        // state and wait for INIT/SIPI from the guest (Intel SDM vol. 3A §9.4), as on a PC.
        if id == 0 {
            fd.set_regs(&boot_regs(boot.protocol, boot.entry))
                .map_err(cfg("registers"))?;
            let mut sregs = fd.get_sregs().map_err(cfg("special registers"))?;
            configure_sregs(&mut sregs, boot.protocol);
            fd.set_sregs(&sregs).map_err(cfg("special registers"))?;
            fd.set_fpu(&boot_fpu()).map_err(cfg("FPU"))?;
        }
        let mut lapic = fd.get_lapic().map_err(cfg("LAPIC"))?;
        set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(cfg("LAPIC"))?;
        Ok(Self {
            id,
            fd,
            cpuid: cpuid_set,
        })
    }

    /// Creates vCPU `id` for a restore: no boot state, [`Self::restore_state`] sets it all.
    pub fn new_bare(vm: &KvmVm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self {
            id,
            fd,
            cpuid: Vec::new(),
        })
    }

    /// Reads this vCPU's state (the VM is paused: called on the vCPU's own thread while it
    /// is parked, or before it ever ran). `msrs`: [`snapshot_msrs`].
    pub fn save_state(&self, msrs: &[u32]) -> Result<VcpuState, VcpuError> {
        let id = self.id;
        let cfg = |what| move |source| VcpuError::Configure { id, what, source };
        let mut list = Msrs::from_entries(
            &msrs
                .iter()
                .map(|&index| kvm_bindings::kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| VcpuError::Msrs)?;
        let read = self.fd.get_msrs(&mut list).map_err(cfg("MSRs"))?;
        if read != msrs.len() {
            return Err(VcpuError::Msrs);
        }
        Ok(VcpuState {
            id,
            cpuid: self.cpuid.clone(),
            mp_state: self.fd.get_mp_state().map_err(cfg("MP state"))?,
            regs: self.fd.get_regs().map_err(cfg("registers"))?,
            sregs: self.fd.get_sregs().map_err(cfg("special registers"))?,
            xsave: self.fd.get_xsave().map_err(cfg("XSAVE"))?,
            xcrs: self.fd.get_xcrs().map_err(cfg("XCRs"))?,
            debugregs: self.fd.get_debug_regs().map_err(cfg("debug registers"))?,
            lapic: self.fd.get_lapic().map_err(cfg("LAPIC"))?,
            msrs: list.as_slice().to_vec(),
            events: self.fd.get_vcpu_events().map_err(cfg("vCPU events"))?,
        })
    }

    /// Sets a saved state, in the order KVM needs: CPUID first (it decides which registers and
    /// MSRs exist), registers, then the LAPIC before the MSRs (the TSC deadline needs the
    /// LAPIC's timer mode), pending events last.
    pub fn restore_state(&mut self, st: &VcpuState) -> Result<(), VcpuError> {
        let id = self.id;
        let cfg = |what| move |source| VcpuError::Configure { id, what, source };
        let cpuid = CpuId::from_entries(&st.cpuid).map_err(|_| VcpuError::Msrs)?;
        self.fd.set_cpuid2(&cpuid).map_err(cfg("CPUID"))?;
        self.cpuid = st.cpuid.clone();
        self.fd.set_mp_state(st.mp_state).map_err(cfg("MP state"))?;
        self.fd.set_regs(&st.regs).map_err(cfg("registers"))?;
        self.fd
            .set_sregs(&st.sregs)
            .map_err(cfg("special registers"))?;
        // SAFETY: the area comes from KVM_GET_XSAVE of a vCPU with the same CPUID (checked
        // against this host before a restore); KVM validates what it loads.
        unsafe { self.fd.set_xsave(&st.xsave) }.map_err(cfg("XSAVE"))?;
        self.fd.set_xcrs(&st.xcrs).map_err(cfg("XCRs"))?;
        self.fd
            .set_debug_regs(&st.debugregs)
            .map_err(cfg("debug registers"))?;
        self.fd.set_lapic(&st.lapic).map_err(cfg("LAPIC"))?;
        // KVM stops at the first MSR it refuses (this host ignores the TSC, see the notes):
        // note it and go on with the rest.
        let mut rest = &st.msrs[..];
        while !rest.is_empty() {
            let msrs = Msrs::from_entries(rest).map_err(|_| VcpuError::Msrs)?;
            let written = self.fd.set_msrs(&msrs).map_err(cfg("MSRs"))?;
            if written >= rest.len() {
                break;
            }
            debug!(
                "vcpu{id}: MSR {:#x} refused on restore",
                rest[written].index
            );
            rest = &rest[written + 1..];
        }
        self.fd
            .set_vcpu_events(&st.events)
            .map_err(cfg("vCPU events"))?;
        Ok(())
    }

    /// Gives up the configured vCPU file descriptor, for tools that drive `KVM_RUN`
    /// themselves (the run-loop benchmark's bare loop measures the floor with it).
    pub fn into_fd(self) -> VcpuFd {
        self.fd
    }

    /// KVM's statistics of this vCPU (its exit counters).
    pub fn open_stats(&self) -> std::io::Result<crate::kvm_stats::VcpuStats> {
        crate::kvm_stats::VcpuStats::open(&self.fd)
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Runs the guest until the VM stops. Called on the vCPU's own thread.
    pub fn run(mut self, buses: &IoBuses, control: &VmControl, seccomp: SeccompMode) {
        if seccomp.filters() {
            if let Err(e) = crate::seccomp::apply(ThreadKind::Vcpu, seccomp) {
                control.request_exit(ExitReason::HostError(format!("vcpu{}: {e}", self.id)));
                return;
            }
            if std::env::var_os(SELFTEST_ENV).is_some_and(|v| v == "vcpu") {
                // Test-only hook: a system call no vCPU thread may make.
                // SAFETY: a plain system call with no memory arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
        }
        if let Err(e) = unblock_kick_signal() {
            control.request_exit(ExitReason::HostError(format!(
                "vcpu{}: cannot unblock the kick signal: {e}",
                self.id
            )));
            return;
        }
        control.mark_first_run();
        // kvm_run stays mapped at this address for the vCPU's life. Through it the kick handler
        // sets `immediate_exit`, and after an I/O exit `io.size` is read to split string I/O
        // (`rep outs`/`rep ins`) into the accesses it stands for (kvm-ioctls hands over all
        // `count * size` bytes at once).
        let run_ptr: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run_ptr));
        // Cleared when this function is left, by a return or a panic, and so before `self`
        // (and with it the mapping of kvm_run) is dropped: a kick after that finds nothing.
        struct Unpublish;
        impl Drop for Unpublish {
            fn drop(&mut self) {
                let _ = KVM_RUN.try_with(|p| p.set(std::ptr::null_mut()));
            }
        }
        let _unpublish = Unpublish;
        self.run_loop(buses, control, run_ptr);
        if log::log_enabled!(log::Level::Debug) {
            let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
            debug!("vcpu{}: stopped at guest RIP {rip:#x}", self.id);
        }
    }

    fn run_loop(
        &mut self,
        buses: &IoBuses,
        control: &VmControl,
        run_ptr: *const kvm_bindings::kvm_run,
    ) {
        loop {
            if control.should_stop() {
                break;
            }
            if control.should_pause() {
                if let Some(stop) = self.park(buses, control, run_ptr) {
                    let reason = self.describe(stop);
                    control.request_exit(reason);
                    break;
                }
                continue;
            }
            let action = match self.fd.run() {
                Ok(exit) => {
                    let io_size = match exit {
                        // SAFETY: `run_ptr` points at this vCPU's mapped kvm_run; after an I/O
                        // exit KVM filled its `io` member. A plain byte read, no reference
                        // overlapping the data bytes `exit` borrows (they lie at data_offset).
                        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => unsafe {
                            std::ptr::addr_of!((*run_ptr).__bindgen_anon_1.io.size).read()
                        },
                        _ => 0,
                    };
                    handle_exit(exit, buses, usize::from(io_size))
                }
                Err(e) => match e.errno() {
                    libc::EINTR => {
                        self.fd.set_kvm_immediate_exit(0);
                        ExitAction::Continue
                    }
                    libc::EAGAIN => ExitAction::Continue,
                    _ => {
                        control.request_exit(ExitReason::HostError(format!(
                            "vcpu{}: KVM_RUN failed: {e}",
                            self.id
                        )));
                        break;
                    }
                },
            };
            match action {
                ExitAction::Continue => {}
                ExitAction::Stop(stop) => {
                    let reason = self.describe(stop);
                    control.request_exit(reason);
                    break;
                }
            }
        }
    }

    /// Parks this vCPU for a pause. First the exit it was in is finished: a port or MMIO read
    /// whose data the guest has not received yet is completed by `KVM_RUN` with
    /// `immediate_exit` set, which returns `EINTR` without entering the guest (KVM API,
    /// `immediate_exit`); string I/O may need more exits on the way, handled as usual. Then
    /// the guest's kvmclock is told it was paused (`KVM_KVMCLOCK_CTRL`; refused, harmlessly,
    /// when the guest does not use kvmclock). Returns a stop if an exit on the way ends the VM.
    fn park(
        &mut self,
        buses: &IoBuses,
        control: &VmControl,
        run_ptr: *const kvm_bindings::kvm_run,
    ) -> Option<VcpuStop> {
        loop {
            self.fd.set_kvm_immediate_exit(1);
            match self.fd.run() {
                Ok(exit) => {
                    let io_size = match exit {
                        // SAFETY: as in the run loop: `run_ptr` is this vCPU's mapped kvm_run.
                        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => unsafe {
                            std::ptr::addr_of!((*run_ptr).__bindgen_anon_1.io.size).read()
                        },
                        _ => 0,
                    };
                    if let ExitAction::Stop(stop) = handle_exit(exit, buses, usize::from(io_size)) {
                        self.fd.set_kvm_immediate_exit(0);
                        return Some(stop);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => break,
                Err(e) => {
                    debug!("vcpu{}: KVM_RUN while pausing: {e}", self.id);
                    break;
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        if let Err(e) = self.fd.kvmclock_ctrl() {
            trace!("vcpu{}: KVM_KVMCLOCK_CTRL: {e}", self.id);
        }
        let msrs = SNAPSHOT_MSRS.get().map_or(&[][..], Vec::as_slice);
        control.park_vcpu(self.id, || {
            self.save_state(msrs).map_err(|e| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s.push_str(&format!(": {src}"));
                }
                s
            })
        });
        None
    }

    /// Turns a stop into an exit reason, reading what KVM left in `kvm_run` where needed.
    fn describe(&mut self, stop: VcpuStop) -> ExitReason {
        let id = self.id;
        match stop {
            VcpuStop::TripleFault => ExitReason::TripleFault { vcpu: id },
            VcpuStop::PowerOff => ExitReason::PowerOff,
            VcpuStop::Reset => ExitReason::Reset,
            VcpuStop::FailEntry(reason) => ExitReason::FailEntry {
                vcpu: id,
                hardware_reason: reason,
            },
            VcpuStop::InternalError => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so KVM filled the
                // `internal` member of the exit union.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                ExitReason::InternalError {
                    vcpu: id,
                    suberror,
                    rip,
                }
            }
            VcpuStop::Unhandled(name) => ExitReason::UnhandledExit {
                vcpu: id,
                exit: name,
            },
        }
    }
}

/// Why a vCPU stops the VM, as seen from one exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// `KVM_EXIT_SYSTEM_EVENT` shutdown, or `HLT` reaching user space.
    PowerOff,
    /// `KVM_EXIT_SYSTEM_EVENT` reset.
    Reset,
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry(u64),
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// An exit Ember does not handle.
    Unhandled(&'static str),
}

/// What the run loop does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(VcpuStop),
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// Handles one exit: routes I/O to the buses and classifies everything else. Touches no KVM
/// file descriptor. Unclaimed port reads see all ones, unclaimed MMIO reads zeros; unclaimed
/// writes are dropped. `io_size` is the width of one port access (KVM's `io.size`): string
/// I/O hands over several accesses in one exit, and each goes to the port on its own.
pub fn handle_exit(exit: VcpuExit<'_>, buses: &IoBuses, io_size: usize) -> ExitAction {
    let width = |len: usize| {
        if (1..len).contains(&io_size) {
            io_size
        } else {
            len.max(1)
        }
    };
    match exit {
        VcpuExit::IoOut(port, data) => {
            for access in data.chunks(width(data.len())) {
                if !buses.pio.write(u64::from(port), access) {
                    trace!("unclaimed port write {port:#x}");
                }
            }
        }
        VcpuExit::IoIn(port, data) => {
            data.fill(0xff);
            let w = width(data.len());
            for access in data.chunks_mut(w) {
                if !buses.pio.read(u64::from(port), access) {
                    trace!("unclaimed port read {port:#x}");
                }
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                trace!("unclaimed MMIO write {addr:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            if !buses.mmio.read(addr, data) {
                trace!("unclaimed MMIO read {addr:#x}");
            }
        }
        VcpuExit::Shutdown => return ExitAction::Stop(VcpuStop::TripleFault),
        VcpuExit::Hlt => return ExitAction::Stop(VcpuStop::PowerOff),
        VcpuExit::SystemEvent(kind, _) => {
            return ExitAction::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                _ => VcpuStop::Unhandled("system event"),
            })
        }
        VcpuExit::FailEntry(reason, _cpu) => return ExitAction::Stop(VcpuStop::FailEntry(reason)),
        VcpuExit::InternalError => return ExitAction::Stop(VcpuStop::InternalError),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => {}
        VcpuExit::Exception => return ExitAction::Stop(VcpuStop::Unhandled("exception")),
        VcpuExit::Debug(_) => return ExitAction::Stop(VcpuStop::Unhandled("debug")),
        VcpuExit::Hypercall(_) => return ExitAction::Stop(VcpuStop::Unhandled("hypercall")),
        _ => return ExitAction::Stop(VcpuStop::Unhandled("unknown")),
    }
    ExitAction::Continue
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Offset of the kick signal from `SIGRTMIN`.
const KICK_SIGNAL_OFFSET: libc::c_int = 0;

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs (null outside [`Vcpu::run`]).
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick: sets `immediate_exit` in this thread's `kvm_run` (as Firecracker does), so that a
/// kick landing between the run loop's flag check and `KVM_RUN` makes that `KVM_RUN` return
/// `EINTR` at once instead of being lost; a `KVM_RUN` already in the guest returns `EINTR`
/// because of the signal itself.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised `Cell` of a pointer: no lazy initialisation and no destructor, so
    // the access is a plain TLS load, async-signal-safe. `try_with` fails only while the
    // thread is being torn down, when there is nothing to kick.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` is set by `Vcpu::run` on this very thread to its vCPU's mapped
            // kvm_run and cleared before that mapping goes away; a volatile byte store.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick-signal handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.errno())
        })
        .map_err(vmm_sys_util::errno::Error::new)
}

fn unblock_kick_signal() -> Result<(), vmm_sys_util::signal::Error> {
    vmm_sys_util::signal::unblock_signal(kick_signal())
}

/// Shared state handed to a vCPU thread.
pub struct VcpuContext {
    /// The buses.
    pub buses: Arc<IoBuses>,
    /// Stop flag and exit reporting.
    pub control: Arc<VmControl>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::Mutex;

    struct Reg(u8, Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(self.0);
        }
        fn write(&mut self, _o: u64, d: &[u8]) {
            self.1.extend_from_slice(d);
        }
    }

    #[test]
    fn io_exits_reach_the_buses() {
        let mut buses = IoBuses::default();
        let dev = Arc::new(Mutex::new(Reg(0x42, vec![])));
        buses.pio.insert(dev.clone(), 0x3f8, 8).expect("insert");
        buses
            .mmio
            .insert(dev.clone(), 0xd000_0000, 0x1000)
            .expect("insert");
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &[1]), &buses, 1),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xd000_0004, &[2, 3]), &buses, 0),
            ExitAction::Continue
        );
        assert_eq!(dev.lock().expect("lock").1, vec![1, 2, 3]);
        let mut d = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3f9, &mut d), &buses, 1);
        assert_eq!(d, [0x42]);
        let mut d = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x80, &mut d), &buses, 2);
        assert_eq!(d, [0xff, 0xff], "unclaimed port reads all ones");
        let mut d = [7u8; 4];
        handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut d), &buses, 0);
        assert_eq!(d, [0; 4], "unclaimed MMIO reads zero");
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[9]), &buses, 1),
            ExitAction::Continue
        );
    }

    #[test]
    fn string_io_is_split_into_accesses() {
        struct Log(Vec<Vec<u8>>);
        impl BusDevice for Log {
            fn read(&mut self, _o: u64, d: &mut [u8]) {
                self.0.push(d.to_vec());
                d.fill(0x11);
            }
            fn write(&mut self, _o: u64, d: &[u8]) {
                self.0.push(d.to_vec());
            }
        }
        let mut buses = IoBuses::default();
        let dev = Arc::new(Mutex::new(Log(vec![])));
        buses.pio.insert(dev.clone(), 0x3f8, 8).expect("insert");
        // `rep outsb` of three bytes: three one-byte writes, not one three-byte access.
        handle_exit(VcpuExit::IoOut(0x3f8, &[1, 2, 3]), &buses, 1);
        // `rep insw` of two words: two two-byte reads.
        let mut d = [0u8; 4];
        handle_exit(VcpuExit::IoIn(0x3f8, &mut d), &buses, 2);
        assert_eq!(d, [0x11; 4]);
        // A plain 32-bit access stays one access.
        handle_exit(VcpuExit::IoOut(0x3f8, &[4, 5, 6, 7]), &buses, 4);
        assert_eq!(
            dev.lock().expect("lock").0,
            vec![
                vec![1],
                vec![2],
                vec![3],
                vec![0xff, 0xff],
                vec![0xff, 0xff],
                vec![4, 5, 6, 7]
            ]
        );
    }

    #[test]
    fn stops_are_classified() {
        let buses = IoBuses::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses, 0),
            ExitAction::Stop(VcpuStop::TripleFault)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                &buses,
                0
            ),
            ExitAction::Stop(VcpuStop::Reset)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &buses,
                0
            ),
            ExitAction::Stop(VcpuStop::PowerOff)
        );
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x80000021, 0), &buses, 0),
            ExitAction::Stop(VcpuStop::FailEntry(0x80000021))
        );
        assert_eq!(
            handle_exit(VcpuExit::InternalError, &buses, 0),
            ExitAction::Stop(VcpuStop::InternalError)
        );
        assert_eq!(handle_exit(VcpuExit::Intr, &buses, 0), ExitAction::Continue);
    }
}
