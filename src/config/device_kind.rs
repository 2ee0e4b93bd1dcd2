//! What a device is to the gateway ([`Role`]) and how it reaches it ([`Transport`]): the words
//! both a `[[device]]` (`sections::device`) and a device profile (`profile`) use, kept apart from
//! both so that neither module depends on the other for them.

use std::fmt;

/// What a device is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Sends scanned codes.
    Scanner,
    /// Sends sales (receipts).
    Register,
}

impl Role {
    /// The config spelling: `scanner` or `register`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scanner => "scanner",
            Role::Register => "register",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a device reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// A serial port (RS-232, USB-CDC, or a pseudo-terminal).
    Serial,
    /// Messages on a topic of the store's MQTT broker.
    Mqtt,
    /// A network receipt printer's raw TCP port (9100): the gateway listens for the register
    /// and forwards each connection to the printer.
    Tcp,
}

impl Transport {
    /// The config spelling: `serial`, `mqtt` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Serial => "serial",
            Transport::Mqtt => "mqtt",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
