//! A scan held back from the POS: its bytes and the way to deliver them. Whoever owns it last
//! delivers it: released on purpose, or when dropped (a queue that was full, an engine that
//! stopped), so a held scan is never swallowed by an error path. Only a crash loses it, and
//! the engine records that (`released_by = "restart"`).

use std::sync::{Arc, Mutex};

/// Delivers bytes to the POS (the device's passthrough).
pub type Deliver = Box<dyn FnOnce(&[u8]) + Send + Sync>;

/// A scan's frame, byte for byte as the scanner sent it (with its terminator), not yet passed
/// on.
pub struct HeldScan {
    inner: Arc<Mutex<Inner>>,
}

/// The bytes and the way to deliver them, shared with the [`HeldTail`].
struct Inner {
    bytes: Vec<u8>,
    deliver: Option<Deliver>,
}

/// The end of a held scan, kept by the scanner task: terminator bytes that arrive after the
/// frame was handed on (the LF of a CR LF in the next read) join it while it is still held, so
/// the POS never gets them before the frame they end.
#[derive(Clone)]
pub struct HeldTail {
    inner: Arc<Mutex<Inner>>,
}

impl HeldScan {
    /// Holds `bytes` until [`release`](Self::release) or drop hands them to `deliver`.
    pub fn new(bytes: Vec<u8>, deliver: Deliver) -> Self {
        HeldScan {
            inner: Arc::new(Mutex::new(Inner {
                bytes,
                deliver: Some(deliver),
            })),
        }
    }

    /// Its end, to add the terminator bytes that come later.
    pub fn tail(&self) -> HeldTail {
        HeldTail {
            inner: self.inner.clone(),
        }
    }

    /// Passes the scan on now.
    pub fn release(self) {
        self.deliver_now();
    }

    fn deliver_now(&self) {
        // Delivered under the lock: a [`HeldTail::append`] comes wholly before or after it.
        let mut inner = lock(&self.inner);
        if let Some(deliver) = inner.deliver.take() {
            deliver(&inner.bytes);
        }
    }
}

impl HeldTail {
    /// Adds `bytes` to the scan if it is still held (true); false when it was delivered
    /// already, and the caller passes them on itself (after the scan, which went first).
    pub fn append(&self, bytes: &[u8]) -> bool {
        let mut inner = lock(&self.inner);
        if inner.deliver.is_none() {
            return false;
        }
        inner.bytes.extend_from_slice(bytes);
        true
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for HeldScan {
    fn drop(&mut self) {
        self.deliver_now();
    }
}

impl std::fmt::Debug for HeldScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("HeldScan")
            .field("bytes", &inner.bytes.len())
            .field("delivered", &inner.deliver.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn terminator_bytes_join_a_held_scan_until_it_is_delivered() {
        let (sent, deliver) = recording();
        let held = HeldScan::new(b"6901234567892\r".to_vec(), deliver);
        let tail = held.tail();
        assert!(tail.append(b"\n"));
        held.release();
        assert_eq!(*sent.lock().unwrap(), vec![b"6901234567892\r\n".to_vec()]);
        assert!(!tail.append(b"\n"), "delivered: the caller passes them on");
    }

    #[test]
    fn a_dropped_scan_is_delivered_not_swallowed() {
        let (sent, deliver) = recording();
        drop(HeldScan::new(b"x\r".to_vec(), deliver));
        assert_eq!(sent.lock().unwrap().len(), 1);
    }
}
