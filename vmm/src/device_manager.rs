//! Creates the VM's devices and wires each one up, always in the same order: interrupt
//! (irqfd), bus insertion, event-loop subscription. Devices themselves know nothing of KVM.

use std::fs::File;
use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use vmm_sys_util::eventfd::EventFd;

use arch::x86_64::layout::{
    BOOT_TIMER, BOOT_TIMER_SIZE, COM1_IRQ, COM1_PORT, EXIT_PORT, EXIT_PORT_SIZE, I8042_KBD_IRQ,
    I8042_PORT, IOAPIC, IOAPIC_SIZE, IRQ_MAX, VIRTIO_IRQ_START, VIRTIO_MMIO_SIZE,
    VIRTIO_MMIO_START, VIRTIO_MMIO_WINDOW_SIZE,
};
use devices::bus::BusError;
use devices::legacy::serial::ConsoleInputSink;
use devices::legacy::{BootTimer, ExitPort, Ioapic, Serial, SerialInput, I8042};
use devices::virtio::block::{BlockHandler, Disk, DiskError, VirtioBlock};
use devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use devices::virtio::{VirtioDevice, VirtioInterrupt};
use devices::{EventFdTrigger, SharedExitSink};
use kvm_ioctls::IoEventAddress;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::config::DiskConfig;
use crate::console::{ConsoleOutputHandler, ConsoleWriter};
use crate::kvm_vm::{GsiRouter, KvmVm, VmError};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::IoBuses;

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("Cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// Registering an irqfd failed.
    #[error("Cannot register the interrupt of {0}")]
    Irqfd(&'static str, #[source] kvm_ioctls::Error),
    /// Registering an ioeventfd failed.
    #[error("Cannot register the queue notification of {0}")]
    Ioeventfd(&'static str, #[source] kvm_ioctls::Error),
    /// Opening a disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A TAP descriptor given in the configuration is not open.
    #[error("TAP descriptor {0} cannot be used")]
    TapFd(i32, #[source] std::io::Error),
    /// Opening a TAP failed.
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::TapError),
    /// The vsock device's host socket cannot be created.
    #[error("Cannot create the vsock socket {path}")]
    VsockSocket {
        /// The path configured.
        path: std::path::PathBuf,
        /// Why (`Address in use`: it exists already).
        #[source]
        source: std::io::Error,
    },
    /// No interrupt line or MMIO window is left for another virtio device.
    #[error("No interrupt line or MMIO window left for {0}")]
    NoSlot(&'static str),
    /// Inserting into a bus failed.
    #[error("Cannot place {0} on the bus")]
    Bus(&'static str, #[source] BusError),
    /// The I/O APIC's interrupt routing could not be set up.
    #[error(transparent)]
    Routing(#[from] VmError),
}

/// An event-loop subscriber shared with the device it serves.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The devices of a VM: the buses for the vCPUs and the subscribers for the event loop.
pub struct Devices {
    /// Port-I/O and MMIO buses.
    pub buses: IoBuses,
    /// Event-loop subscribers.
    pub subscribers: Vec<Subscriber>,
    /// The i8042, to type Ctrl+Alt+Del when the VM's owner asks for a shutdown.
    pub i8042: Arc<Mutex<I8042>>,
    /// The console's output side, to write out what is left when the VM ends.
    pub(crate) console_out: Arc<Mutex<ConsoleOutputHandler>>,
    /// The devices whose state a snapshot saves.
    pub(crate) stateful: StatefulDevices,
    /// The vsock device's socket file, removed when the VM's handle goes.
    pub(crate) vsock_socket: Option<SocketFile>,
}

/// A Unix socket file Ember created; dropping it removes the file if it is still the one
/// created (not a file someone put in its place since).
#[derive(Debug)]
pub struct SocketFile {
    path: std::path::PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn new(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The devices a snapshot saves, shared with the buses.
#[derive(Clone)]
pub(crate) struct StatefulDevices {
    pub ioapic: Arc<Mutex<Ioapic>>,
    pub serial: Arc<Mutex<crate::console::VmSerial>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio-mmio transports, in attachment order (disks first, in order).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// The console's pieces for the UART: the vCPU-side writer, the buffer it fills, where the
/// output goes and where input comes from.
pub(crate) struct ConsoleParts {
    pub writer: ConsoleWriter,
    pub buffer: Arc<devices::legacy::ConsoleBuffer>,
    pub output: crate::console::ConsoleOutput,
    pub input: Option<File>,
    /// Typed into the guest's console before any input (a restored guest's command).
    pub typed: Vec<u8>,
}

/// The legacy devices' saved states, for a restore.
pub(crate) struct LegacyStates<'a> {
    pub ioapic: &'a devices::legacy::IoapicState,
    pub serial: &'a devices::legacy::serial::SerialDeviceState,
    pub i8042: &'a devices::legacy::I8042State,
}

/// Creates the legacy devices: the I/O APIC, COM1, the i8042 reset line and the exit port.
pub(crate) fn create_legacy_devices(
    vm: &KvmVm,
    exit_sink: SharedExitSink,
    console: ConsoleParts,
    vcpus: u8,
    restore: Option<LegacyStates<'_>>,
) -> Result<Devices, DeviceError> {
    let ConsoleParts {
        writer: console_writer,
        buffer: console_buffer,
        output: console_out,
        input: console_in,
        typed,
    } = console;
    let mut buses = IoBuses::default();
    let mut subscribers: Vec<Subscriber> = Vec::new();

    // The I/O APIC takes the APIC ID after the vCPUs', as the MP table says.
    let router = Box::new(GsiRouter::new(vm.fd.clone())?);
    let ioapic = Arc::new(Mutex::new(match &restore {
        Some(r) => Ioapic::from_state(r.ioapic, router),
        None => Ioapic::new(vcpus, router),
    }));
    buses
        .mmio
        .insert(ioapic.clone(), IOAPIC, IOAPIC_SIZE)
        .map_err(|e| DeviceError::Bus("the I/O APIC", e))?;

    let com1_irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|e| DeviceError::EventFd("COM1", e))?;
    vm.fd
        .register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(|e| DeviceError::Irqfd("COM1", e))?;
    let (serial, drained) = match &restore {
        Some(r) => Serial::from_state(r.serial, EventFdTrigger::new(com1_irq), console_writer),
        None => Serial::new(EventFdTrigger::new(com1_irq), console_writer),
    }
    .map_err(|e| DeviceError::EventFd("COM1", e))?;
    let serial = Arc::new(Mutex::new(
        serial.with_output_buffer(console_buffer.clone()),
    ));
    let console_out = Arc::new(Mutex::new(ConsoleOutputHandler::new(
        console_out,
        console_buffer,
        serial.clone(),
    )));
    let serial_for_state = serial.clone();
    subscribers.push(console_out.clone());
    buses
        .pio
        .insert(serial.clone(), u64::from(COM1_PORT), 8)
        .map_err(|e| DeviceError::Bus("COM1", e))?;
    let console_in = match console_in {
        // Something to type but no input: /dev/null, which epoll refuses, so only the typed
        // bytes go in.
        None if !typed.is_empty() => {
            Some(File::open("/dev/null").map_err(|e| DeviceError::EventFd("COM1 input", e))?)
        }
        other => other,
    };
    if let Some(input) = console_in {
        let sink: Arc<Mutex<dyn ConsoleInputSink>> = serial;
        subscribers.push(Arc::new(Mutex::new(
            SerialInput::new(sink, input, drained).with_prefix(&typed),
        )));
    }

    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|e| DeviceError::EventFd("i8042", e))?;
    vm.fd
        .register_irqfd(&kbd_irq, I8042_KBD_IRQ)
        .map_err(|e| DeviceError::Irqfd("i8042", e))?;
    let kbd_irq = Some(EventFdTrigger::new(kbd_irq));
    let i8042 = Arc::new(Mutex::new(match &restore {
        Some(r) => I8042::from_state(r.i8042, exit_sink.clone(), kbd_irq),
        None => I8042::new(exit_sink.clone(), kbd_irq),
    }));
    buses
        .pio
        .insert(i8042.clone(), u64::from(I8042_PORT), 5)
        .map_err(|e| DeviceError::Bus("i8042", e))?;

    let exit_port = Arc::new(Mutex::new(ExitPort::new(exit_sink)));
    buses
        .pio
        .insert(exit_port, u64::from(EXIT_PORT), EXIT_PORT_SIZE)
        .map_err(|e| DeviceError::Bus("exit port", e))?;

    Ok(Devices {
        buses,
        subscribers,
        stateful: StatefulDevices {
            ioapic,
            serial: serial_for_state,
            i8042: i8042.clone(),
            transports: Vec::new(),
        },
        i8042,
        console_out,
        vsock_socket: None,
    })
}

/// Hands out virtio-mmio windows and their interrupt lines (GSIs), with rust-vmm's
/// vm-allocator.
pub(crate) struct MmioAllocator {
    windows: AddressAllocator,
    gsis: IdAllocator,
}

impl MmioAllocator {
    /// Windows from `layout::VIRTIO_MMIO_START`, GSIs from `layout::VIRTIO_IRQ_START` to the
    /// last I/O APIC pin.
    pub(crate) fn new() -> Self {
        Self {
            windows: AddressAllocator::new(VIRTIO_MMIO_START, VIRTIO_MMIO_WINDOW_SIZE)
                .expect("the layout's virtio-mmio range is valid (checked at compile time)"),
            gsis: IdAllocator::new(VIRTIO_IRQ_START, IRQ_MAX)
                .expect("the layout's virtio GSI range is valid"),
        }
    }

    fn allocate(&mut self, name: &'static str) -> Result<(u64, u32), DeviceError> {
        let gsi = self
            .gsis
            .allocate_id()
            .map_err(|_| DeviceError::NoSlot(name))?;
        let window = self
            .windows
            .allocate(VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SIZE, AllocPolicy::FirstMatch)
            .map_err(|_| DeviceError::NoSlot(name))?;
        Ok((window.start(), gsi))
    }
}

/// What a virtio device brings to [`attach_virtio_mmio`]: the device, and how to make its
/// event-loop handler from its queues' notification eventfds (index = queue index).
pub(crate) struct VirtioMmioDevice {
    /// For messages ("a disk", "the network card").
    pub name: &'static str,
    /// The device behind the transport.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// Builds the handler that serves the queues when their eventfds fire.
    pub handler: Box<dyn FnOnce(Vec<EventFd>) -> Subscriber>,
}

/// Attaches a virtio device over MMIO: a window and a GSI from `alloc`, the irqfd, one
/// ioeventfd per queue on `QueueNotify` with the queue's index as its datamatch (the value the
/// driver writes there, virtio 1.2 §4.2.2), the transport on the bus, the handler on the
/// event loop. Returns the kernel command-line entry that announces the device.
pub(crate) fn attach_virtio_mmio(
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    alloc: &mut MmioAllocator,
    devices: &mut Devices,
    dev: VirtioMmioDevice,
) -> Result<String, DeviceError> {
    let name = dev.name;
    let (base, gsi) = alloc.allocate(name)?;
    let eventfd = || {
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| DeviceError::EventFd(name, e))
    };
    let irq = eventfd()?;
    vm.fd
        .register_irqfd(&irq, gsi)
        .map_err(|e| DeviceError::Irqfd(name, e))?;
    let queues = dev
        .device
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .queue_max_sizes()
        .len();
    let mut kicks = Vec::with_capacity(queues);
    let mut kicks_for_bus = Vec::with_capacity(queues);
    for index in 0..queues {
        let kick = eventfd()?;
        vm.fd
            .register_ioevent(
                &kick,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                index as u32,
            )
            .map_err(|e| DeviceError::Ioeventfd(name, e))?;
        kicks_for_bus.push(
            kick.try_clone()
                .map_err(|e| DeviceError::EventFd(name, e))?,
        );
        kicks.push(kick);
    }
    let transport = MmioTransport::new(
        dev.device,
        mem.clone(),
        VirtioInterrupt::new(irq),
        kicks_for_bus,
    );
    let transport = Arc::new(Mutex::new(transport));
    devices
        .buses
        .mmio
        .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
        .map_err(|e| DeviceError::Bus(name, e))?;
    devices.stateful.transports.push(transport);
    devices.subscribers.push((dev.handler)(kicks));
    Ok(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"))
}

/// Attaches one virtio-net device per interface, `eth0` first; returns the command-line
/// entries that announce them.
pub(crate) fn create_net_devices(
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    alloc: &mut MmioAllocator,
    nets: &[crate::config::NetConfig],
    devices: &mut Devices,
) -> Result<Vec<String>, DeviceError> {
    let mut cmdline = Vec::with_capacity(nets.len());
    for (i, cfg) in nets.iter().enumerate() {
        let tap = match cfg.fd {
            None => devices::virtio::net::Tap::open(&cfg.tap)?,
            Some(fd) => {
                // A duplicate: the descriptor stays its owner's.
                // SAFETY: fcntl on a descriptor number; a bad one fails with EBADF.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(DeviceError::TapFd(fd, std::io::Error::last_os_error()));
                }
                // SAFETY: `dup` is a new descriptor owned by nothing else.
                let owned =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
                devices::virtio::net::Tap::from_fd(owned)?
            }
        };
        let mac = cfg
            .mac_bytes(i)
            .map_err(|_| DeviceError::NoSlot("a MAC address"))?;
        let net = Arc::new(Mutex::new(devices::virtio::net::VirtioNet::new(
            tap,
            mac,
            mem.clone(),
        )));
        let for_handler = net.clone();
        cmdline.push(attach_virtio_mmio(
            vm,
            mem,
            alloc,
            devices,
            VirtioMmioDevice {
                name: "a network interface",
                device: net,
                handler: Box::new(move |kicks| {
                    let mut k = kicks.into_iter();
                    let rx = k.next().expect("virtio-net has a receive queue");
                    let tx = k.next().expect("virtio-net has a transmit queue");
                    Arc::new(Mutex::new(devices::virtio::net::NetHandler::new(
                        for_handler,
                        rx,
                        tx,
                    )))
                }),
            },
        )?);
    }
    Ok(cmdline)
}

/// Attaches the virtio-vsock device, its host side listening on `socket`; returns the
/// command-line entry that announces it.
pub(crate) fn create_vsock_device(
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    alloc: &mut MmioAllocator,
    cid: u32,
    socket: &std::path::Path,
    devices: &mut Devices,
) -> Result<String, DeviceError> {
    use devices::virtio::vsock::{Muxer, VirtioVsock, VsockHandler};
    let bad = |source| DeviceError::VsockSocket {
        path: socket.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(bad)?;
    // Removed again if anything below fails.
    let file = SocketFile::new(socket).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    let muxer = Muxer::new(u64::from(cid), socket.to_path_buf(), listener);
    let vsock = Arc::new(Mutex::new(VirtioVsock::new(
        u64::from(cid),
        muxer,
        mem.clone(),
    )));
    let for_handler = vsock.clone();
    let entry = attach_virtio_mmio(
        vm,
        mem,
        alloc,
        devices,
        VirtioMmioDevice {
            name: "the vsock device",
            device: vsock,
            handler: Box::new(move |kicks| {
                let kicks: [EventFd; 3] = kicks
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("virtio-vsock has three queues"));
                Arc::new(Mutex::new(VsockHandler::new(for_handler, kicks)))
            }),
        },
    )?;
    devices.vsock_socket = Some(file);
    Ok(entry)
}

/// Attaches one virtio-blk device per disk, `/dev/vda` first; returns the command-line
/// entries that announce them.
pub(crate) fn create_block_devices(
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    alloc: &mut MmioAllocator,
    disks: &[DiskConfig],
    devices: &mut Devices,
) -> Result<Vec<String>, DeviceError> {
    let mut cmdline = Vec::with_capacity(disks.len());
    for (i, cfg) in disks.iter().enumerate() {
        let letter = char::from(b'a' + (i % 26) as u8);
        let serial = cfg
            .serial
            .clone()
            .unwrap_or_else(|| format!("ember-vd{letter}"));
        let disk = Disk::open(&cfg.path, cfg.read_only, &serial)?;
        let block = Arc::new(Mutex::new(VirtioBlock::new(disk, mem.clone())));
        let for_handler = block.clone();
        cmdline.push(attach_virtio_mmio(
            vm,
            mem,
            alloc,
            devices,
            VirtioMmioDevice {
                name: "a disk",
                device: block,
                handler: Box::new(move |kicks| {
                    let kick = kicks
                        .into_iter()
                        .next()
                        .expect("virtio-blk has one request queue");
                    Arc::new(Mutex::new(BlockHandler::new(for_handler, kick)))
                }),
            },
        )?);
    }
    Ok(cmdline)
}

/// Places the boot-timer device at `layout::BOOT_TIMER`.
pub(crate) fn create_boot_timer(
    control: &crate::control::VmControl,
    devices: &mut Devices,
) -> Result<(), DeviceError> {
    let timer = Arc::new(Mutex::new(BootTimer::new(control.boot_timer.clone())));
    devices
        .buses
        .mmio
        .insert(timer, BOOT_TIMER, BOOT_TIMER_SIZE)
        .map_err(|e| DeviceError::Bus("the boot timer", e))
}
