//! Legacy PC devices: the 16550 UART (and the buffer behind its output), the i8042, the I/O APIC and Ember's guest
//! exit port.

pub mod boot_timer;
pub mod console_buffer;
pub mod exit_port;
pub mod i8042;
pub mod ioapic;
pub mod serial;

pub use boot_timer::BootTimer;
pub use console_buffer::ConsoleBuffer;
pub use exit_port::ExitPort;
pub use i8042::{I8042State, I8042};
pub use ioapic::{Ioapic, IoapicState, MsiMessage, MsiRouter, PinRoutes, IOAPIC_PINS};
pub use serial::{Serial, SerialInput};
