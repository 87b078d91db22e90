//! Helpers shared by Ember's integration tests (`tests/common`) and benchmarks
//! (`benches/harness`): the repository root, KVM and kvm-pvm detection, the freestanding test
//! guests, the `resources/` guest artefacts, and spawning a program with a timeout while
//! capturing and timing what it prints.
//!
//! Test code: a helper that cannot do its job panics with what went wrong, which fails the
//! test or benchmark that called it.
//!
//! The `ember` binary: `env!("CARGO_BIN_EXE_ember")` exists only while Cargo compiles the
//! root package's integration tests and benchmarks, not this crate, so the path comes from the
//! caller through [`ember_bin!`], a macro that expands `env!` in the calling crate. Cargo
//! then guarantees the binary is built first and names it exactly, for every profile, target
//! directory and target triple; the runners here take any program ([`Spawn::new`]), Ember or
//! QEMU alike.
#![deny(missing_docs)]

mod artefacts;
mod guests;
mod host;
mod process;

use std::path::{Path, PathBuf};

pub use artefacts::{guest_initramfs, guest_kernel, guest_rootfs};
pub use guests::{build_guest, guest_source, GUEST_CFLAGS};
pub use host::{enter_netns, run_ok, vsock_connect, Netns, HOST_CIDR};
pub use process::{Run, Spawn};

/// The path of the `ember` binary under test, as a `&'static str`. Usable only in the root
/// package's integration tests and benchmarks (where Cargo sets `CARGO_BIN_EXE_ember` and
/// builds the binary before them); anywhere else it does not compile.
#[macro_export]
macro_rules! ember_bin {
    () => {
        env!("CARGO_BIN_EXE_ember")
    };
}

/// The repository root (the workspace directory holding `tests/`, `benches/`, `resources/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives in the repository root")
        .to_path_buf()
}

/// Whether KVM is usable. Without it a test fails under `CI=true` and is skipped (with a
/// printed reason) elsewhere.
pub fn require_kvm() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("/dev/kvm is not usable and CI=true: KVM tests cannot be skipped");
        }
        eprintln!("SKIPPED: /dev/kvm is not usable on this host");
    }
    ok
}

/// Whether the host's KVM is kvm-pvm (guest kernel code runs under its instruction emulator).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}
