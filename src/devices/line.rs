//! A profile's serial line settings (baud, data bits, parity, stop bits, flow control), turned
//! into a tokio-serial builder and into words. Used by the serial device and the passthrough, which
//! both open ports, so neither depends on the other for it.

use crate::config::{FlowControl, LineSettings, Parity};

/// A tokio-serial builder for `path` with the given line settings.
pub fn builder(path: &str, line: &LineSettings) -> tokio_serial::SerialPortBuilder {
    let data_bits = match line.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match line.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = match line.stop_bits {
        2 => tokio_serial::StopBits::Two,
        _ => tokio_serial::StopBits::One,
    };
    let flow_control = match line.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(path, line.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow_control)
}

/// "9600 8N1" and the flow control, for log lines and records.
pub fn describe_line(line: &LineSettings) -> String {
    let parity = match line.parity {
        Parity::None => 'N',
        Parity::Odd => 'O',
        Parity::Even => 'E',
    };
    let flow = match line.flow_control {
        FlowControl::None => "",
        FlowControl::Software => " xon/xoff",
        FlowControl::Hardware => " rts/cts",
    };
    format!(
        "{} {}{}{}{flow}",
        line.baud, line.data_bits, parity, line.stop_bits
    )
}
