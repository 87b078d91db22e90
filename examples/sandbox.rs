//! Runs N guests concurrently in one process, each with a timeout, and prints for each its
//! exit reason, its console output and its wall time: the shape of a sandbox service.
//!
//! ```text
//! cargo run --release --example sandbox -- --kernel vmlinux --initrd initrd.cpio.gz -n 8 -- echo hello
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use vmm::{Capture, Console, ConsoleInput, ConsoleOutput, Vm, VmConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Guest kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (the project's runs the command given after `--`).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: Ember's).
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of guests to run at once.
    #[arg(short, long, default_value_t = 4)]
    n: usize,
    /// Per-guest timeout in milliseconds; a guest still running then is stopped.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Command for the guest's init.
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut builder = VmConfig::builder(&args.kernel).memory_mib(args.memory_mib);
    if let Some(i) = &args.initrd {
        builder = builder.initrd(i);
    }
    if let Some(c) = &args.cmdline {
        builder = builder.cmdline(c.clone());
    }
    if !args.command.is_empty() {
        builder = builder.command(args.command.clone());
    }
    let config = builder.build()?;

    let timeout = Duration::from_millis(args.timeout_ms);
    let mut running = Vec::with_capacity(args.n);
    for i in 0..args.n {
        let capture = Capture::default();
        let console = Console {
            output: ConsoleOutput::Capture(capture.clone()),
            input: ConsoleInput::None,
        };
        let started = Instant::now();
        let handle = Vm::start_with_console(config.clone(), console)?;
        running.push((i, handle, capture, started));
    }
    for (i, mut handle, capture, started) in running {
        let left = timeout.saturating_sub(started.elapsed());
        let (exit, timed_out) = match handle.wait_timeout(left) {
            Some(e) => (e, false),
            None => (handle.stop(Duration::from_millis(500)), true),
        };
        println!(
            "guest {i}: {}{} after {:.3} s",
            exit.reason,
            if timed_out { " (timed out)" } else { "" },
            started.elapsed().as_secs_f64()
        );
        for line in capture.text().lines() {
            println!("  | {line}");
        }
    }
    Ok(())
}
