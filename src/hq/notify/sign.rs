//! The robots' signing algorithms, as pure functions of the secret and a timestamp.
//!
//! - DingTalk (加签): `sign = urlencode(base64(HMAC-SHA256(key = secret, message =
//!   "{timestamp_ms}\n{secret}")))`, sent as `&timestamp=…&sign=…` in the URL's query.
//! - Feishu/Lark (签名校验): `sign = base64(HMAC-SHA256(key = "{timestamp_s}\n{secret}",
//!   message = ""))`, sent as the body fields `"timestamp"` (a string) and `"sign"`.
//!
//! Both robots refuse a timestamp more than an hour from their clock, so a signature is made
//! afresh for every attempt, never stored.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;

/// HMAC-SHA256, which both robots use.
type HmacSha256 = Hmac<Sha256>;

/// base64 of HMAC-SHA256 of `message` under `key`.
fn hmac_base64(key: &[u8], message: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// DingTalk's `sign` for `timestamp_ms` (milliseconds since the epoch), URL-encoded, ready for
/// the query string.
pub(crate) fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let string_to_sign = format!("{timestamp_ms}\n{secret}");
    let sign = hmac_base64(secret.as_bytes(), string_to_sign.as_bytes());
    // base64 holds only letters, digits, '+', '/' and '=': the last three get encoded.
    utf8_percent_encode(&sign, NON_ALPHANUMERIC).to_string()
}

/// `url` with DingTalk's `timestamp` and `sign` appended to its query.
pub(crate) fn dingtalk_signed_url(url: &str, secret: &str, timestamp_ms: i64) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let sign = dingtalk_sign(secret, timestamp_ms);
    format!("{url}{separator}timestamp={timestamp_ms}&sign={sign}")
}

/// Feishu's `sign` for `timestamp_s` (seconds since the epoch).
pub(crate) fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    let string_to_sign = format!("{timestamp_s}\n{secret}");
    hmac_base64(string_to_sign.as_bytes(), b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HMAC computed here directly, step by step as the vendors' documentation writes it,
    /// independently of [`hmac_base64`].
    fn reference(key: &str, message: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("key");
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn dingtalk_signs_timestamp_and_secret_with_the_secret() {
        let secret = "SECtestsecret";
        let timestamp = 1_700_000_000_000;
        let expected = STANDARD.encode(reference(secret, &format!("{timestamp}\n{secret}")));
        let decoded = percent_encoding::percent_decode_str(&dingtalk_sign(secret, timestamp))
            .decode_utf8()
            .expect("utf-8")
            .to_string();
        assert_eq!(decoded, expected);
        // Known answer, from Python: quote_plus(b64encode(hmac.new(secret, f"{ts}\n{secret}",
        // sha256).digest())).
        assert_eq!(
            dingtalk_sign(secret, timestamp),
            "7LVwF0dAF3%2F%2BMRRulbpE4y72Ogzykc6bS2nG4I99T4s%3D"
        );
    }

    #[test]
    fn dingtalk_appends_to_the_query_or_starts_one() {
        let sign = dingtalk_sign("s", 5);
        assert_eq!(
            dingtalk_signed_url("https://h/robot/send?access_token=t", "s", 5),
            format!("https://h/robot/send?access_token=t&timestamp=5&sign={sign}")
        );
        assert_eq!(
            dingtalk_signed_url("http://127.0.0.1:1/send", "s", 5),
            format!("http://127.0.0.1:1/send?timestamp=5&sign={sign}")
        );
    }

    #[test]
    fn feishu_signs_the_empty_message_keyed_by_timestamp_and_secret() {
        let secret = "SECtestsecret";
        let timestamp = 1_700_000_000;
        let expected = STANDARD.encode(reference(&format!("{timestamp}\n{secret}"), ""));
        assert_eq!(feishu_sign(secret, timestamp), expected);
        // Known answer, from Python: b64encode(hmac.new(f"{ts}\n{secret}", b"",
        // sha256).digest()).
        assert_eq!(
            feishu_sign(secret, timestamp),
            "qctwDqaazOo8xxU2d5mAVhFAk6TEeaDHQUh0YMWFIL8="
        );
        assert_ne!(feishu_sign(secret, timestamp + 1), expected);
    }
}
