//! Detection of kvm-pvm hosts, whose KVM runs guest kernels under an instruction emulator
//! that lacks some instructions. On such a host Ember gives the guest the compatibility CPU
//! model and command-line options from `arch::x86_64::cpuid`.

use std::path::Path;

use crate::config::PvmMode;

/// Whether this host's `/dev/kvm` is served by kvm-pvm.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Whether to apply the compatibility settings under `mode`.
pub fn use_compat(mode: PvmMode) -> bool {
    match mode {
        PvmMode::On => true,
        PvmMode::Off => false,
        PvmMode::Auto => host_is_pvm(),
    }
}
