//! Ember's VMM library: builds, runs and stops KVM virtual machines.
//!
//! ```text
//! VmConfig ─► validate ─► guest memory ─► KvmVm (memory slots, split irqchip, TSS) ─► kernel,
//! initramfs, command line, boot structures ─► devices (buses, I/O APIC, irqfds) ─► vCPUs ─►
//! vCPU threads + VMM thread
//! ```
//!
//! Each VM owns its threads and file descriptors; nothing is global except the process-wide
//! handler of the real-time signal that kicks vCPU threads out of `KVM_RUN` (an empty handler,
//! see [`vcpu::kick_signal`]). The library never prints and never touches the terminal.
#![deny(missing_docs)]

pub mod boot;
pub mod command;
pub mod config;
pub mod console;
pub mod control;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
pub mod kvm_stats;
pub mod kvm_vm;
pub mod memory;
pub mod pvm;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use arch::x86_64::cpuid::PVM_GUEST_CMDLINE;
pub use config::{
    parse_memory_size, ConfigError, DiskConfig, NetConfig, PvmMode, VmConfig, VmConfigBuilder,
    VsockConfig, DEFAULT_CMDLINE, DEFAULT_THP,
};
pub use console::{Capture, Console, ConsoleInput, ConsoleOutput};
pub use control::PauseError;
pub use exit::ExitReason;
pub use kvm_stats::ExitCounts;
pub use vm::{RestoreOptions, Timestamps, Vm, VmEndWaiter, VmExit, VmHandle, VmStopper};

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Creating the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] kvm_vm::VmError),
    /// Creating guest memory failed.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Loading the kernel or initramfs failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Creating a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Creating a device failed.
    #[error(transparent)]
    Device(#[from] device_manager::DeviceError),
    /// Creating an eventfd or pipe failed.
    #[error("Cannot create an event descriptor")]
    EventFd(#[source] std::io::Error),
    /// Creating the event loop failed.
    #[error("Cannot create the event loop: {0:?}")]
    EventManager(event_manager::Error),
    /// Installing the vCPU kick signal handler failed.
    #[error("Cannot install the vCPU kick signal handler (errno {0})")]
    Signal(i32),
    /// The seccomp filters cannot be prepared.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// Spawning a thread failed.
    #[error("Cannot start a VM thread")]
    Thread(#[source] std::io::Error),
    /// Writing or reading a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The VM could not be paused.
    #[error(transparent)]
    Pause(#[from] control::PauseError),
    /// The VM's clock could not be read or set.
    #[error("Cannot {0} the VM's clock")]
    Clock(&'static str, #[source] kvm_ioctls::Error),
    /// The command for a restored guest cannot be encoded.
    #[error(transparent)]
    Command(#[from] command::CommandError),
    /// A snapshot's devices do not fit the configuration it was taken with.
    #[error("Snapshot does not fit its configuration: {0}")]
    SnapshotMismatch(String),
}

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
