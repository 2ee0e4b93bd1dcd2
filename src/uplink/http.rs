//! HTTP(S) transport for the uplink (docs/hq-protocol.md): one POST per batch, the bearer
//! token from `token_file`, and HQ's status code mapped to a [`Delivery`].
//!
//! The token file is read for every delivery, so a rotated token is picked up without a
//! restart, and a missing file is a retryable error shown in the status, not a crash.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::StatusCode;

use super::delivery::Delivery;
use crate::config::{Compression, UplinkSettings};

/// Longest wait for a TCP/TLS connection to HQ.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for HQ's whole answer to one batch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle connection to HQ is kept for the next batch: less than the 10 s after which
/// `posgw hq` (and most servers) close one, so no batch goes out on a connection being closed.
const IDLE_CONNECTION: Duration = Duration::from_secs(5);
/// Most of HQ's error body kept in the status and dead-letter reasons.
const REASON_MAX: usize = 500;

/// The gateway's HTTP client for HQ (batches here, the fleet's configuration and heartbeats in
/// `fleet::client`): bounded waits, no redirects, idle connections let go before HQ closes them.
pub(crate) fn hq_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // A redirect would turn a POST into a body-less GET whose 2xx means nothing: HQ's
        // endpoint must answer itself.
        .redirect(reqwest::redirect::Policy::none())
        // `posgw hq` (like most servers) closes a connection idle for 10 s; a request sent on
        // one it is closing fails and is sent again. Let go of idle connections first.
        .pool_idle_timeout(IDLE_CONNECTION)
        .user_agent(concat!("posgw/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot create the HTTP client")
}

/// Posts batches to an `http://` or `https://` endpoint.
pub struct HttpTransport {
    client: reqwest::Client,
    endpoint: String,
    token_file: Option<PathBuf>,
}

impl HttpTransport {
    /// A client for the configured endpoint.
    pub fn new(settings: &UplinkSettings) -> anyhow::Result<Self> {
        let client = hq_client()?;
        Ok(HttpTransport {
            client,
            endpoint: settings.endpoint.clone(),
            token_file: settings.token_file.clone(),
        })
    }

    /// One attempt to deliver `body`.
    pub async fn deliver(&self, body: &bytes::Bytes, compression: Compression) -> Delivery {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        match compression {
            Compression::None => {}
            Compression::Gzip => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            Compression::Zstd => {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            }
        }
        if let Some(path) = &self.token_file {
            let token = match std::fs::read_to_string(path) {
                Ok(token) => token,
                Err(error) => {
                    return Delivery::Retry {
                        error: format!("cannot read token_file {}: {error}", path.display()),
                        after: None,
                    }
                }
            };
            match HeaderValue::from_str(&format!("Bearer {}", token.trim())) {
                Ok(value) => {
                    headers.insert(AUTHORIZATION, value);
                }
                Err(_) => {
                    return Delivery::Retry {
                        error: format!(
                            "token_file {} holds characters not allowed in a header",
                            path.display()
                        ),
                        after: None,
                    }
                }
            }
        }
        let response = self
            .client
            .post(&self.endpoint)
            .headers(headers)
            .body(body.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Delivery::Retry {
                    error: format!("cannot reach HQ: {}", error_chain(&error)),
                    after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        if status.is_success() {
            return Delivery::Accepted;
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("nowhere")
                .to_owned();
            return Delivery::Retry {
                error: format!("HQ answered {status} to {location}: set [uplink] endpoint to the final address"),
                after: None,
            };
        }
        let reason = response.text().await.unwrap_or_default();
        let reason = format!(
            "HQ answered {status}: {}",
            truncate(reason.trim(), REASON_MAX)
        );
        classify(status, reason, retry_after)
    }
}

/// Maps a non-2xx status to what the uplink must do (docs/hq-protocol.md).
pub fn classify(status: StatusCode, reason: String, retry_after: Option<Duration>) -> Delivery {
    match status.as_u16() {
        413 => Delivery::TooLarge,
        400 | 422 => Delivery::Rejected(reason),
        // 401/403 (credentials), 408/429/5xx (transient) and anything unexpected: keep every
        // record and try again; the status shows why.
        _ => Delivery::Retry {
            error: reason,
            after: retry_after,
        },
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let past = httpdate::fmt_http_date(std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn statuses_map_to_the_contracts_actions() {
        let reason = || "r".to_string();
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, reason(), None),
            Delivery::TooLarge
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, reason(), None),
            Delivery::Rejected(_)
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, reason(), None),
            Delivery::Rejected(_)
        ));
        for code in [401, 403, 408, 429, 500, 502, 503, 504, 404] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(status, reason(), None), Delivery::Retry { .. }),
                "{code} must be retried"
            );
        }
        let Delivery::Retry { after, .. } = classify(
            StatusCode::TOO_MANY_REQUESTS,
            reason(),
            Some(Duration::from_secs(3)),
        ) else {
            panic!("429 is retried")
        };
        assert_eq!(after, Some(Duration::from_secs(3)));
    }
}
