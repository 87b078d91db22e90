//! The compiler flags of the freestanding test guests, shared by the integration tests
//! (tests/common) and the benchmarks (benches/harness): 64-bit, no libc, no SSE, no red zone,
//! no stack protector, a fixed load address from the linker script given separately.

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
pub fn guest_source(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let c = dir.join(format!("{name}.c"));
    if c.exists() {
        c
    } else {
        dir.join(format!("{name}.S"))
    }
}
