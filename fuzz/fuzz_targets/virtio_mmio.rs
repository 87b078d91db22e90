#![no_main]
//! Fuzz target `virtio_mmio`: see ../targets.rs.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::virtio_mmio(data));
