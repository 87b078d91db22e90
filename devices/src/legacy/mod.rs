//! Legacy PC devices: the 16550 UART, the i8042 reset line, the I/O APIC and Ember's guest
//! exit port.

pub mod boot_timer;
pub mod exit_port;
pub mod i8042;
pub mod ioapic;
pub mod serial;

pub use boot_timer::BootTimer;
pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use ioapic::{Ioapic, MsiMessage, MsiRouter, PinRoutes, IOAPIC_PINS};
pub use serial::{Serial, SerialInput};
