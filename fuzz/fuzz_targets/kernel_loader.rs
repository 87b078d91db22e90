#![no_main]
//! Fuzz target `kernel_loader`: see ../targets.rs.

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::kernel_loader(data));
