//! The customer reference: a member id typed or scanned at the counter is kept only as
//! HMAC-SHA256(key, id), hex, first 16 bytes (`[privacy] customer_key_file`). The id itself
//! never leaves the request that carried it: not into the engine, a record, the state file or
//! a log line.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key that turns member ids into references.
#[derive(Clone)]
pub struct CustomerKey(Vec<u8>);

impl CustomerKey {
    /// A key of these bytes (the key file's contents, trailing newline removed).
    pub fn new(bytes: Vec<u8>) -> Self {
        CustomerKey(bytes)
    }

    /// Reads the key file; its contents (without surrounding whitespace) are the key.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read the customer key {}: {error}", path.display()))?;
        let key = bytes.trim_ascii();
        if key.len() < 16 {
            return Err(format!(
                "the customer key {} holds {} bytes; at least 16 are needed",
                path.display(),
                key.len()
            ));
        }
        Ok(CustomerKey(key.to_vec()))
    }

    /// The reference for `member` (trimmed): 32 lowercase hex digits.
    pub fn reference(&self, member: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(member.trim().as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_truncated_hmac_and_hides_the_id() {
        let key = CustomerKey::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let reference = key.reference(" M00012345 ");
        assert_eq!(reference.len(), 32);
        assert_eq!(reference, key.reference("M00012345"));
        assert!(!reference.contains("12345"));
        assert_ne!(
            reference,
            CustomerKey::new(b"another key, 16+ bytes".to_vec()).reference("M00012345")
        );
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customer.key");
        std::fs::write(&path, "short\n").unwrap();
        assert!(CustomerKey::load(&path)
            .unwrap_err()
            .contains("at least 16"));
    }
}
