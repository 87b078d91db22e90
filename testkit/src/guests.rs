//! The freestanding test guests in `tests/guests/`: C (or preprocessed assembly) compiled by
//! the system gcc for 64-bit with no libc, no SSE, no red zone and no stack protector, at the
//! fixed load address of the linker script given with it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// gcc arguments before `-Wl,-T,<script> -o <out> <source>`.
pub const GUEST_CFLAGS: &[&str] = &[
    "-O2",
    "-m64",
    "-ffreestanding",
    "-fno-pic",
    "-no-pie",
    "-nostdlib",
    "-static",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-Wall",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,--no-warn-rwx-segments",
];

/// The source of guest `name` in `dir`: `<name>.c`, or `<name>.S` (assembly through the C
/// preprocessor) when there is no C file.
pub fn guest_source(dir: &Path, name: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    if c.exists() {
        c
    } else {
        dir.join(format!("{name}.S"))
    }
}

/// Compiles `tests/guests/<name>.c` (or `.S`) with the linker script `tests/guests/<ld>` into
/// `<out_dir>/<name>.elf` (created if missing) and returns its path. The ELF is written under
/// a per-process name and renamed into place, so test binaries building the same guest at the
/// same time never see half a file.
pub fn build_guest(name: &str, ld: &str, out_dir: &Path) -> PathBuf {
    let dir = crate::repo_root().join("tests/guests");
    let src = guest_source(&dir, name);
    std::fs::create_dir_all(out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    let out = out_dir.join(format!("{name}.elf"));
    let tmp = out_dir.join(format!("{name}.elf.{}", std::process::id()));
    let status = Command::new("gcc")
        .args(GUEST_CFLAGS)
        .arg(format!("-Wl,-T,{}", dir.join(ld).display()))
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc must be installed to build the test guests");
    assert!(status.success(), "building {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("install guest");
    out
}
