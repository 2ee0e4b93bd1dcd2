//! The `data` of a `device` record (docs/records.md): a device connected, disconnected, sent a
//! frame that is not a scan or a sale (`bad_frame`, its bytes escaped in `detail`) or failed
//! (`error`). The core writes them.

use serde::Serialize;

/// `data` of a `device` record.
#[derive(Debug, Serialize)]
pub struct DeviceData<'a> {
    /// The device's id.
    pub device: &'a str,
    /// connected | disconnected | bad_frame | error.
    pub event: &'static str,
    /// Human-readable detail.
    pub detail: &'a str,
}
