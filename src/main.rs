//! `ember`: the command-line front end. It turns arguments into a `vmm::VmConfig`, connects
//! the VM's console to the terminal, and turns the VM's end into an exit status. Everything
//! else lives in the `vmm` library.

mod boot_timer;
mod terminal;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::{Parser, ValueEnum};

use vmm::{Console, ConsoleInput, ConsoleOutput, PvmMode, Vm, VmConfig};

/// Ember: a minimal, fast and secure virtual machine monitor on Linux KVM.
///
/// Boots a Linux kernel (ELF vmlinux or bzImage) with its serial console on this terminal.
/// Ctrl-C or SIGTERM ask the guest to shut down (then stop it after --stop-grace); SIGHUP
/// stops it at once.
#[derive(Parser, Debug)]
// A flag given twice takes its last value (`resources/boot.sh --cpus 4` overrides the
// script's own `--cpus 2`).
#[command(version, about, long_about = None, after_help = EXIT_HELP, args_override_self = true)]
struct Cli {
    /// Guest kernel: an ELF vmlinux (PVH entry when present) or a bzImage.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["restore", "api_sock", "no_api"]
    )]
    kernel: Option<PathBuf>,
    /// Serve Firecracker's API on a Unix socket at PATH (which must not exist): configure,
    /// start, pause, snapshot and load one VM by HTTP requests (see the README).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["kernel", "restore", "snapshot", "initrd", "cmdline", "disk", "net", "command", "no_api"]
    )]
    api_sock: Option<PathBuf>,
    /// With --config-file: start the VM from the file and serve no API (Firecracker's flag).
    #[arg(
        long,
        requires = "config_file",
        conflicts_with_all = ["kernel", "restore", "snapshot", "initrd", "cmdline", "disk", "net", "command"]
    )]
    no_api: bool,
    /// A Firecracker configuration file (JSON: boot-source, drives, machine-config,
    /// network-interfaces, vsock, logger, metrics): the VM starts from it at once. With
    /// --api-sock or --no-api.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// With --api-sock or --no-api: the instance id `GET /` reports (Firecracker's `--id`).
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    id: String,
    /// Boot the guest until it is ready (the console marker of --snapshot-on-marker), write a
    /// snapshot of it into DIR and exit.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    snapshot: Option<PathBuf>,
    /// With --snapshot: the console text that says the guest is ready.
    #[arg(
        long,
        value_name = "STR",
        default_value = "ember-init: ready",
        requires = "snapshot"
    )]
    snapshot_on_marker: String,
    /// Start from the snapshot in DIR instead of booting (no kernel, no boot options).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "cpus", "disk", "net", "vsock"]
    )]
    restore: Option<PathBuf>,
    /// With --restore: the vsock device's host socket instead of the snapshot's (each clone
    /// of a snapshot needs its own).
    #[arg(long, value_name = "PATH", requires = "restore")]
    vsock_socket: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) for the guest.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default one.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Guest memory: MiB (512) or with a suffix (512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    memory: String,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// A virtio-blk disk, `PATH[,ro][,serial=ID]`. Repeatable; the guest sees /dev/vda,
    /// /dev/vdb, ... in order. Without --initrd the first disk is the root filesystem.
    #[arg(long, value_name = "PATH[,ro]")]
    disk: Vec<String>,
    /// A virtio-net interface on an existing TAP device, `tap=NAME[,mac=MAC]`, or on a TAP
    /// descriptor this process inherited (opened with IFF_VNET_HDR), `fd=N[,mac=MAC]`.
    /// Repeatable; the guest sees eth0, eth1, ... in order. Ember configures nothing on the
    /// host.
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC]")]
    net: Vec<String>,
    /// A virtio-vsock device, `cid=N,socket=PATH`: host processes connect to PATH and write
    /// `CONNECT <port>` to reach that guest port; guest connections to host port P go to
    /// PATH_P (Firecracker's protocol). PATH must not exist; it is removed at exit.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<String>,
    /// PVM compatibility CPU model and guest options: auto (on kvm-pvm hosts), on, off.
    #[arg(long, value_enum, default_value_t = PvmArg::Auto)]
    pvm: PvmArg,
    /// A command (and its arguments) for the project's initramfs to run in the guest;
    /// `ember` then exits with the command's status. Give it after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
    /// seccomp-bpf filters on every thread: on, or off for debugging (with a warning).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    seccomp: OnOff,
    /// Guest memory backing: transparent huge pages (on) or 4 KiB pages (off); both are
    /// populated as the guest touches them. Default off: on the hosts measured, huge pages did
    /// not make boots faster and cost RSS (see the README's Benchmarking).
    #[arg(long, value_enum, default_value_t = if vmm::DEFAULT_THP { OnOff::On } else { OnOff::Off })]
    thp: OnOff,
    /// Time the boot: print when each phase happened (process start, configuration, memory,
    /// kernel, first KVM_RUN, first console output, console marker, boot-timer signal, stop
    /// requested, exit)
    /// to stderr when the VM ends.
    #[arg(long)]
    boot_timer: bool,
    /// The console marker for --boot-timer: the first time this string appears on the
    /// console is a phase.
    #[arg(long, value_name = "STR", default_value = "Run /init as init process")]
    boot_timer_marker: String,
    /// Seconds a guest gets to shut down cleanly after SIGINT or SIGTERM (Ctrl+Alt+Del on its
    /// keyboard) before it is stopped by force; 0 stops it at once. A second signal forces.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_grace)]
    stop_grace: f64,
    /// Print the default kernel command line and exit.
    #[arg(long, exclusive = true, hide = true)]
    print_default_cmdline: bool,
}

const EXIT_HELP: &str =
    "Exit status: 0 when the guest powers off or resets; the guest's own status when it \
writes one to I/O port 0xf4; 1 for an error (bad input, host failure); 2 for a usage error; \
3 after a triple fault; 4 after a KVM internal error or entry failure; 128+N after signal N.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PvmArg {
    Auto,
    On,
    Off,
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Test-only hook: with this variable set to 1, `ember` panics right after entering raw mode
/// (the terminal must be restored all the same).
const PANIC_SELFTEST_ENV: &str = "EMBER_PANIC_SELFTEST";

fn main() -> ExitCode {
    let process_start = std::time::Instant::now();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message up to its first blank line, on one line.
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("ember: {}", line.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let api_mode = cli.api_sock.is_some() || cli.no_api;
    if cli.config_file.is_some() && !api_mode {
        eprintln!("ember: --config-file needs --api-sock PATH or --no-api");
        return ExitCode::from(2);
    }
    if api_mode {
        if let Err(e) = api::logger::install(api::logger::level_from_env()) {
            eprintln!("ember: {e}");
        }
    } else {
        init_logger();
    }
    terminal::install_panic_hook();
    let result = if api_mode {
        run_api(cli, process_start)
    } else {
        run(cli, process_start)
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("ember: {msg}");
            ExitCode::from(1)
        }
    }
}

fn init_logger() {
    use std::io::Write;
    let env = env_logger::Env::new()
        .filter_or("EMBER_LOG", "info")
        .write_style("EMBER_LOG_STYLE");
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Info => String::new(),
                l => format!("{}: ", l.as_str().to_lowercase()),
            };
            writeln!(buf, "ember: {level}{}", record.args())
        })
        .init();
}

/// Joins an error and its sources into one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn run(cli: Cli, process_start: std::time::Instant) -> Result<u8, String> {
    let boot_timer = cli.boot_timer;
    let stop_grace = std::time::Duration::from_secs_f64(cli.stop_grace);
    if cli.print_default_cmdline {
        println!("{}", vmm::DEFAULT_CMDLINE);
        return Ok(0);
    }
    let memory = vmm::parse_memory_size(&cli.memory).map_err(|e| error_chain(&e))?;
    let vcpus = u8::try_from(cli.cpus)
        .ok()
        .filter(|n| (1..=254).contains(n))
        .ok_or_else(|| error_chain(&vmm::ConfigError::VcpuCount(cli.cpus)))?;
    let disks = cli
        .disk
        .iter()
        .map(|d| vmm::DiskConfig::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error_chain(&e))?;
    let console_marker = if cli.snapshot.is_some() {
        Some(cli.snapshot_on_marker.clone())
    } else {
        cli.boot_timer.then(|| cli.boot_timer_marker.clone())
    };
    let restore_command = if cli.restore.is_some() {
        (!cli.command.is_empty()).then(|| cli.command.clone())
    } else {
        None
    };
    let nets = cli
        .net
        .iter()
        .map(|n| vmm::NetConfig::parse(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error_chain(&e))?;
    let vsock = cli
        .vsock
        .as_deref()
        .map(vmm::VsockConfig::parse)
        .transpose()
        .map_err(|e| error_chain(&e))?;
    let config = VmConfig {
        disks,
        nets,
        vsock,
        // A snapshot without a command waits for one from each restore.
        wait_for_command: cli.snapshot.is_some() && cli.command.is_empty(),
        command: (cli.restore.is_none() && !cli.command.is_empty()).then_some(cli.command),
        console_marker,
        seccomp: match cli.seccomp {
            OnOff::On => vmm::seccomp::SeccompMode::On,
            OnOff::Off => vmm::seccomp::SeccompMode::Off,
        },
        thp: cli.thp == OnOff::On,
        kernel: cli.kernel.unwrap_or_default(),
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        memory,
        vcpus,
        pvm: match cli.pvm {
            PvmArg::Auto => PvmMode::Auto,
            PvmArg::On => PvmMode::On,
            PvmArg::Off => PvmMode::Off,
        },
    };

    // Signals that stop the VM are handled by one thread (sigwait); every other thread,
    // the VM's included, inherits them blocked.
    let signals =
        terminal::block_stop_signals().map_err(|e| format!("Cannot block signals: {e}"))?;

    let stdout =
        dup_file(std::io::stdout().as_fd()).map_err(|e| format!("Cannot use stdout: {e}"))?;
    let stdin = dup_file(std::io::stdin().as_fd()).map_err(|e| format!("Cannot use stdin: {e}"))?;
    // Raw mode for a terminal, restored when `_raw` drops, on every path out of here (and by
    // the panic hook and the SIGSYS reporter where nothing drops).
    let _raw = terminal::RawMode::enter(&stdin);
    if std::env::var_os(PANIC_SELFTEST_ENV).is_some_and(|v| v == "1") {
        // As in a release build, where a panic aborts: no destructor runs.
        std::mem::forget(_raw);
        panic!("self-test panic ({PANIC_SELFTEST_ENV}=1)");
    }
    let console = Console {
        output: ConsoleOutput::File(stdout),
        input: ConsoleInput::File(stdin),
    };
    let seccomp = config.seccomp.filters();
    if seccomp {
        terminal::install_sigsys_reporter()
            .map_err(|e| format!("Cannot install the SIGSYS handler: {e}"))?;
    } else {
        log::warn!("seccomp filters are off: use this for debugging only");
    }
    let mut handle = match &cli.restore {
        Some(dir) => Vm::restore_with(
            dir,
            console,
            vmm::RestoreOptions {
                command: restore_command,
                seccomp: config.seccomp,
                console_marker: config.console_marker.clone(),
                vsock_socket: cli.vsock_socket.clone(),
                paused: false,
            },
        ),
        None => Vm::start_with_console(config, console),
    }
    .map_err(|e| error_chain(&e))?;

    terminal::spawn_signal_thread(signals, seccomp, stop_grace, handle.stopper(), |sig| {
        SIGNAL.store(sig, Ordering::SeqCst);
    })
    .map_err(|e| format!("Cannot start the signal thread: {e}"))?;
    if let Some(dir) = &cli.snapshot {
        // This thread writes the snapshot, so it stays without the CLI's filter (the VM's
        // threads have theirs).
        return snapshot_when_ready(&mut handle, dir, &cli.snapshot_on_marker);
    }
    if seccomp {
        // No thread is created after this point (clone would be refused).
        vmm::seccomp::apply(
            vmm::seccomp::ThreadKind::Main,
            vmm::seccomp::SeccompMode::On,
        )
        .map_err(|e| error_chain(&e))?;
    }

    let exit = handle.wait();
    if boot_timer {
        eprint!(
            "{}",
            boot_timer::phase_table(process_start, &exit.timestamps)
        );
        if let Some(c) = handle.exit_counts() {
            eprint!("{}", boot_timer::exits_line(&c));
        }
    }
    let sig = SIGNAL.load(Ordering::SeqCst);
    if sig != 0 {
        return Ok((128 + sig) as u8);
    }
    if !exit.reason.is_orderly() {
        eprintln!("ember: {}", exit.reason);
    }
    Ok(exit.reason.exit_code() as u8)
}

/// Firecracker's API mode: `--api-sock PATH` serves the API on a thread while this thread
/// runs the controller that owns the VM; `--config-file FILE` starts the VM from the file
/// first; `--no-api` serves nothing. The process ends when its VM ends (exit status as the
/// CLI's) or, before a VM runs, at a stop signal; the socket file is removed.
fn run_api(cli: Cli, process_start: std::time::Instant) -> Result<u8, String> {
    use std::cell::RefCell;
    use std::rc::Rc;

    let seccomp = match cli.seccomp {
        OnOff::On => vmm::seccomp::SeccompMode::On,
        OnOff::Off => vmm::seccomp::SeccompMode::Off,
    };
    // Every thread started from here inherits the stop signals blocked.
    let signals =
        terminal::block_stop_signals().map_err(|e| format!("Cannot block signals: {e}"))?;
    if seccomp.filters() {
        terminal::install_sigsys_reporter()
            .map_err(|e| format!("Cannot install the SIGSYS handler: {e}"))?;
    } else {
        log::warn!("seccomp filters are off: use this for debugging only");
    }
    let (events, inbox) = std::sync::mpsc::channel();
    let server = match &cli.api_sock {
        Some(path) => Some(
            api::ApiSocket::bind(path)
                .and_then(|s| s.spawn(events.clone(), seccomp))
                .map_err(|e| error_chain(&e))?,
        ),
        None => None,
    };
    let forward = std::sync::Mutex::new(events.clone());
    terminal::spawn_signal_forwarder(signals, seccomp.filters(), move |sig| {
        let _ = forward
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(api::Event::Signal(sig));
    })
    .map_err(|e| format!("Cannot start the signal thread: {e}"))?;

    // The console is the process's stdout and stdin, as Firecracker's; a terminal on stdin
    // goes raw when the VM starts and is restored when this function returns.
    let raw: Rc<RefCell<Option<terminal::RawMode>>> = Rc::new(RefCell::new(None));
    let raw_for_console = raw.clone();
    let console = move || -> std::io::Result<Console> {
        let stdout = dup_file(std::io::stdout().as_fd())?;
        let stdin = dup_file(std::io::stdin().as_fd())?;
        raw_for_console
            .borrow_mut()
            .get_or_insert_with(|| terminal::RawMode::enter(&stdin));
        Ok(Console {
            output: ConsoleOutput::File(stdout),
            input: ConsoleInput::File(stdin),
        })
    };
    let mut controller = api::Controller::new(
        api::ControllerOptions {
            seccomp,
            console_marker: cli.boot_timer.then(|| cli.boot_timer_marker.clone()),
            stop_grace: std::time::Duration::from_secs_f64(cli.stop_grace),
            instance_id: cli.id.clone(),
            console: Box::new(console),
        },
        events,
    );
    if let Some(file) = &cli.config_file {
        let configured = std::fs::read_to_string(file)
            .map_err(|e| format!("Cannot read the configuration file {}: {e}", file.display()))
            .and_then(|json| controller.configure_from_file(&json));
        if let Err(e) = configured {
            // The channel first: a request the API thread waits on is then answered (503)
            // and the thread can stop.
            drop(controller);
            drop(inbox);
            drop(server);
            return Err(e);
        }
    }
    let outcome = controller.run(inbox);
    if let Some(s) = server {
        s.shutdown();
    }
    drop(raw);
    let Some(exit) = outcome.exit else {
        return Ok(outcome.signal.map_or(0, |sig| (128 + sig) as u8));
    };
    if cli.boot_timer {
        eprint!(
            "{}",
            boot_timer::phase_table(process_start, &exit.timestamps)
        );
        if let Some(t) = exit.timestamps.boot_timer {
            eprintln!(
                "ember:   InstanceStart to boot-timer signal: {:.3} ms",
                t.saturating_duration_since(exit.timestamps.start)
                    .as_secs_f64()
                    * 1e3
            );
        }
        if let Some(c) = &outcome.exits {
            eprint!("{}", boot_timer::exits_line(c));
        }
    }
    if let Some(sig) = outcome.signal {
        return Ok((128 + sig) as u8);
    }
    if !exit.reason.is_orderly() {
        eprintln!("ember: {}", exit.reason);
    }
    Ok(exit.reason.exit_code() as u8)
}

/// Waits for the guest's ready marker, writes the snapshot, ends the VM.
fn snapshot_when_ready(
    handle: &mut vmm::VmHandle,
    dir: &std::path::Path,
    marker: &str,
) -> Result<u8, String> {
    while !handle.console_marker_seen() {
        if let Some(exit) = handle.wait_timeout(std::time::Duration::from_millis(1)) {
            return Err(format!(
                "the guest ended ({}) before '{marker}' appeared on its console; no snapshot",
                exit.reason
            ));
        }
    }
    // Paused from here to the end: the guest does nothing after the state the snapshot holds.
    handle.pause().map_err(|e| error_chain(&e))?;
    let info = handle.snapshot(dir).map_err(|e| error_chain(&e))?;
    handle.kill();
    eprintln!(
        "ember: snapshot written to {} ({} MiB of memory data for {} MiB of RAM, {} KiB of state)",
        dir.display(),
        info.memory_bytes_written >> 20,
        info.ram_bytes >> 20,
        info.state_bytes >> 10
    );
    Ok(0)
}

fn parse_grace(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 3600")),
    }
}

fn dup_file(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<File> {
    let owned: OwnedFd = fd.try_clone_to_owned()?;
    Ok(File::from(owned))
}
