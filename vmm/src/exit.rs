//! Why a VM ended, and the exit status the `ember` command maps each reason to.

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine (e.g. Linux `reboot` with `reboot=k`, or a panic with
    /// `panic=1`).
    Reset,
    /// The guest wrote this status to the exit port (0xf4).
    Status(u8),
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// KVM could not run or emulate the guest (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Guest instruction pointer at the failure.
        rip: u64,
    },
    /// The hardware refused to enter the guest (`KVM_EXIT_FAIL_ENTRY`).
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        hardware_reason: u64,
    },
    /// A vCPU exit Ember does not handle.
    UnhandledExit {
        /// The vCPU.
        vcpu: u8,
        /// Which exit.
        exit: &'static str,
    },
    /// Something failed on the host side while the VM ran.
    HostError(String),
    /// The VM was stopped by its owner (`VmHandle::kill` or `stop`).
    Stopped,
}

/// Exit status of `ember` when the VMM itself fails (bad input, host error).
pub const EXIT_CODE_ERROR: i32 = 1;
/// Exit status of `ember` after a triple fault.
pub const EXIT_CODE_TRIPLE_FAULT: i32 = 3;
/// Exit status of `ember` after an internal error, entry failure or unhandled exit.
pub const EXIT_CODE_INTERNAL_ERROR: i32 = 4;
/// Exit status of `ember` when the VM was stopped by its owner (a signal to `ember`).
pub const EXIT_CODE_STOPPED: i32 = 5;

impl ExitReason {
    /// The exit status `ember` reports for this reason: 0 for power-off and reset, the
    /// guest's own status for the exit port, and the `EXIT_CODE_*` values otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::PowerOff | Self::Reset => 0,
            Self::Status(s) => i32::from(*s),
            Self::TripleFault { .. } => EXIT_CODE_TRIPLE_FAULT,
            Self::InternalError { .. } | Self::FailEntry { .. } | Self::UnhandledExit { .. } => {
                EXIT_CODE_INTERNAL_ERROR
            }
            Self::HostError(_) => EXIT_CODE_ERROR,
            Self::Stopped => EXIT_CODE_STOPPED,
        }
    }

    /// Whether the guest ended the VM in an orderly way (power-off, reset or exit status).
    pub fn is_orderly(&self) -> bool {
        matches!(self, Self::PowerOff | Self::Reset | Self::Status(_))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Reset => write!(f, "guest reset"),
            Self::Status(s) => write!(f, "guest exited with status {s}"),
            Self::TripleFault { vcpu } => write!(f, "triple fault on vCPU {vcpu}"),
            Self::InternalError {
                vcpu,
                suberror,
                rip,
            } => {
                write!(
                f,
                "KVM internal error on vCPU {vcpu}: suberror {suberror}{} at guest RIP {rip:#x}",
                if *suberror == 1 { " (emulation failure)" } else { "" }
            )
            }
            Self::FailEntry {
                vcpu,
                hardware_reason,
            } => write!(
                f,
                "KVM failed to enter the guest on vCPU {vcpu}: hardware reason {hardware_reason:#x}"
            ),
            Self::UnhandledExit { vcpu, exit } => write!(f, "unhandled {exit} exit on vCPU {vcpu}"),
            Self::HostError(e) => write!(f, "host error: {e}"),
            Self::Stopped => write!(f, "stopped by its owner"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_where_they_must_be() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::Status(42).exit_code(), 42);
        let tf = ExitReason::TripleFault { vcpu: 0 }.exit_code();
        let ie = ExitReason::InternalError {
            vcpu: 0,
            suberror: 1,
            rip: 0,
        }
        .exit_code();
        assert!(tf != 0 && ie != 0 && tf != ie && tf != EXIT_CODE_ERROR);
        assert!(ExitReason::InternalError {
            vcpu: 1,
            suberror: 1,
            rip: 0x1234
        }
        .to_string()
        .contains("0x1234"));
    }
}
