//! `cargo bench --bench runloop`: Ember's cost per vCPU exit against a bare `KVM_RUN` loop
//! (the floor) on the same host, in the same run. The tiny guest writes N times to an
//! unclaimed port (`ioloop:N`) or MMIO address (`mmioloop:N`), then exits through port 0xf4.
//! Ember runs it through the library (first `KVM_RUN` to exit); the bare loop runs the same
//! guest, set up by Ember's own boot code, with a loop that only re-enters the guest. Each
//! figure is (T(N) - T(0)) / N, so start-up and teardown cancel out. `EMBER_BENCH_EXITS`
//! sets N (default 200000), `EMBER_BENCH_ROUNDS` the rounds (default 5).

#[path = "harness/mod.rs"]
mod harness;

use std::time::Instant;

use kvm_ioctls::VcpuExit;
use serde_json::json;
use vmm::{PvmMode, Vm, VmConfig};

fn ember_run(kernel: &std::path::Path, action: &str) -> f64 {
    let cfg = VmConfig::builder(kernel)
        .cmdline(action)
        .memory_mib(32)
        .pvm(PvmMode::Off)
        .build()
        .expect("config");
    let exit = Vm::start(cfg).expect("start").wait();
    assert_eq!(exit.reason, vmm::ExitReason::Status(0), "{action}");
    let t = exit.timestamps;
    t.exit
        .duration_since(t.first_run.expect("ran"))
        .as_secs_f64()
}

fn bare_run(kernel: &std::path::Path, action: &str) -> f64 {
    use vmm::boot::{load_kernel, write_boot_structures};
    let mem = vmm::memory::create_guest_memory(32 << 20).expect("memory");
    let vm = vmm::kvm_vm::KvmVm::new(&mem).expect("vm");
    let k = load_kernel(&mem, kernel).expect("kernel");
    write_boot_structures(&mem, 32 << 20, 1, &k, action, None).expect("boot structures");
    let boot = vmm::vcpu::VcpuBootConfig {
        protocol: k.protocol,
        entry: k.entry,
        count: 1,
        pvm_compat: false,
    };
    let mut fd = vmm::vcpu::Vcpu::new(&vm, 0, &boot).expect("vcpu").into_fd();
    let start = Instant::now();
    loop {
        match fd.run() {
            Ok(VcpuExit::IoOut(0xf4, _)) => break,
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::IoIn(_, d)) | Ok(VcpuExit::MmioRead(_, d)) => d.fill(0),
            Ok(other) => panic!("bare loop: unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => panic!("bare loop: {e}"),
        }
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    if !harness::bench_requested("runloop") {
        return;
    }
    let n: u64 = harness::env_or("EMBER_BENCH_EXITS", 200_000);
    let rounds: usize = harness::env_or("EMBER_BENCH_ROUNDS", 5);
    let tiny = harness::build_guest("tiny", "tiny.ld");
    let mut results = serde_json::Map::new();
    let mut lines = vec![format!(
        "| {:<26} | {:>14} | {:>14} | {:>11} |\n|{}|{}|{}|{}|",
        "exit kind",
        "Ember ns/exit",
        "bare ns/exit",
        "Ember/bare",
        "-".repeat(28),
        "-".repeat(16),
        "-".repeat(16),
        "-".repeat(13)
    )];
    for kind in ["ioloop", "mmioloop"] {
        let (mut ember, mut bare) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            eprintln!("bench: {kind} round {}/{rounds}", r + 1);
            let full = format!("action={kind}:{n}");
            let zero = format!("action={kind}:0");
            let e = (ember_run(&tiny, &full) - ember_run(&tiny, &zero)) / n as f64 * 1e9;
            let b = (bare_run(&tiny, &full) - bare_run(&tiny, &zero)) / n as f64 * 1e9;
            ember.push(e);
            bare.push(b);
        }
        let (e, b) = (harness::stats(&ember), harness::stats(&bare));
        lines.push(format!(
            "| {:<26} | {:>14.0} | {:>14.0} | {:>11.3} |",
            if kind == "ioloop" {
                "port I/O write"
            } else {
                "MMIO write"
            },
            e.median,
            b.median,
            e.median / b.median
        ));
        results.insert(
            kind.to_string(),
            json!({"ember_ns_per_exit": e.json(), "bare_ns_per_exit": b.json(), "ratio_median": e.median / b.median,
                   "ember_samples": ember, "bare_samples": bare}),
        );
    }
    let v = json!({"benchmark": "runloop", "exits_per_run": n, "rounds": rounds, "pvm": harness::host_is_pvm(), "results": results});
    let p = harness::write_json("runloop", &v);
    println!("{}\n\nJSON: {}", lines.join("\n"), p.display());
}
