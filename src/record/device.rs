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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_data_keeps_the_contract_field_order() {
        let data = DeviceData {
            device: "till-1-scanner",
            event: "bad_frame",
            detail: "binary noise: \\x00",
        };
        assert_eq!(
            serde_json::to_string(&data).expect("json"),
            r#"{"device":"till-1-scanner","event":"bad_frame","detail":"binary noise: \\x00"}"#
        );
    }
}
