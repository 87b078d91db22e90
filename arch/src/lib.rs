//! x86_64 boot setup for Ember guests.
//!
//! This crate computes everything a guest needs at its first instruction: the guest-physical
//! memory layout, the e820 map, the Linux zero page and the PVH start info, the GDT, identity
//! page tables, the MP table, boot registers, MSRs and the per-vCPU CPUID. It never touches
//! `/dev/kvm`: it produces values (`kvm_regs`, `CpuId`, ...) that the `vmm` crate applies, so
//! all of it is unit-testable on any host.
#![deny(missing_docs)]

pub mod x86_64;
