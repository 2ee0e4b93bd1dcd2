//! A scan held back from the POS: its bytes and the way to deliver them. Whoever owns it last
//! delivers it: released on purpose, or when dropped (a queue that was full, an engine that
//! stopped), so a held scan is never swallowed by an error path. Only a crash loses it, and
//! the engine records that (`released_by = "restart"`).

/// Delivers bytes to the POS (the device's passthrough).
pub type Deliver = Box<dyn FnOnce(&[u8]) + Send + Sync>;

/// A scan's frame, byte for byte as the scanner sent it (with its terminator), not yet passed
/// on.
pub struct HeldScan {
    bytes: Vec<u8>,
    deliver: Option<Deliver>,
}

impl HeldScan {
    /// Holds `bytes` until [`release`](Self::release) or drop hands them to `deliver`.
    pub fn new(bytes: Vec<u8>, deliver: Deliver) -> Self {
        HeldScan {
            bytes,
            deliver: Some(deliver),
        }
    }

    /// Passes the scan on now.
    pub fn release(mut self) {
        self.deliver_now();
    }

    fn deliver_now(&mut self) {
        if let Some(deliver) = self.deliver.take() {
            deliver(&self.bytes);
        }
    }
}

impl Drop for HeldScan {
    fn drop(&mut self) {
        self.deliver_now();
    }
}

impl std::fmt::Debug for HeldScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldScan")
            .field("bytes", &self.bytes.len())
            .field("delivered", &self.deliver.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recording() -> (Arc<Mutex<Vec<Vec<u8>>>>, Deliver) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let into = sent.clone();
        let deliver: Deliver =
            Box::new(move |bytes: &[u8]| into.lock().unwrap().push(bytes.to_vec()));
        (sent, deliver)
    }

    #[test]
    fn a_released_scan_is_delivered_once() {
        let (sent, deliver) = recording();
        HeldScan::new(b"6901234567892\r\n".to_vec(), deliver).release();
        assert_eq!(*sent.lock().unwrap(), vec![b"6901234567892\r\n".to_vec()]);
    }

    #[test]
    fn a_dropped_scan_is_delivered_not_swallowed() {
        let (sent, deliver) = recording();
        drop(HeldScan::new(b"x\r".to_vec(), deliver));
        assert_eq!(sent.lock().unwrap().len(), 1);
    }
}
