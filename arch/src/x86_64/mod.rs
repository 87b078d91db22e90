//! x86_64 (Intel SDM, Linux x86 boot protocol, PVH boot ABI) boot setup.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;
