//! HTTP to HQ's fleet endpoints: fetch the store's document (`If-None-Match`, a body read no
//! further than [`MAX_DOCUMENT_BYTES`]) and post a heartbeat. Like the uplink's client: rustls,
//! no redirects, timeouts on connect and on the whole request, idle connections let go before
//! HQ closes them, and the token file read for every request (a rotated token needs no
//! restart; a missing one is an error shown in the status, not a crash).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::StatusCode;

use super::wire::{bounded, Heartbeat};
use crate::config::{FleetDocument, FleetSettings};

/// Largest document accepted from HQ: as much as the local files together may hold.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the document in force is current.
    NotModified,
    /// 200 with a document.
    Document {
        /// HQ's ETag of it.
        etag: Option<String>,
        /// The document.
        document: FleetDocument,
    },
    /// 200 with a body that cannot be a document (too large, not one): refused like an
    /// invalid one.
    Unusable {
        /// HQ's ETag of it.
        etag: Option<String>,
        /// Why.
        error: String,
    },
}

/// A request that failed (HQ unreachable, an error status): tried again after a backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub error: String,
    /// HQ's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(error: impl Into<String>) -> Self {
        Failure {
            error: error.into(),
            retry_after: None,
        }
    }
}

/// The fleet endpoints of one store.
pub struct Client {
    /// The HTTP client.
    http: reqwest::Client,
    /// `{url}/{store}/config`.
    config_url: String,
    /// `{url}/{store}/heartbeat`.
    heartbeat_url: String,
    /// The store's token file.
    token_file: PathBuf,
}

impl Client {
    /// A client for `settings` and `store`.
    pub fn new(settings: &FleetSettings, store: &str) -> anyhow::Result<Client> {
        let http = crate::uplink::http::hq_client()?;
        Ok(Client {
            http,
            config_url: format!("{}/{store}/config", settings.url),
            heartbeat_url: format!("{}/{store}/heartbeat", settings.url),
            token_file: settings.token_file.clone(),
        })
    }

    /// The bearer header value, read from the token file now.
    fn authorization(&self) -> Result<String, Failure> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|error| {
            Failure::new(format!(
                "cannot read token_file {}: {error}",
                self.token_file.display()
            ))
        })?;
        Ok(format!("Bearer {}", token.trim()))
    }

    /// `GET {url}/{store}/config`, with `If-None-Match: etag` when one is given.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, Failure> {
        let mut request = self
            .http
            .get(&self.config_url)
            .header(AUTHORIZATION, self.authorization()?);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(refused(response).await);
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Ok(too_large(etag));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Ok(too_large(etag));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(match serde_json::from_slice::<FleetDocument>(&body) {
            Ok(document) => Fetched::Document { etag, document },
            Err(error) => Fetched::Unusable {
                etag,
                error: format!("HQ's answer is not a fleet document: {error}"),
            },
        })
    }

    /// `POST {url}/{store}/heartbeat`.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), Failure> {
        let body =
            serde_json::to_vec(heartbeat).map_err(|error| Failure::new(error.to_string()))?;
        let response = self
            .http
            .post(&self.heartbeat_url)
            .header(AUTHORIZATION, self.authorization()?)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(refused(response).await)
        }
    }
}

/// A document over the size limit.
fn too_large(etag: Option<String>) -> Fetched {
    Fetched::Unusable {
        etag,
        error: format!("HQ's document is larger than {MAX_DOCUMENT_BYTES} bytes"),
    }
}

/// A transport error, with its causes.
fn unreachable(error: reqwest::Error) -> Failure {
    let mut text = format!("cannot reach HQ: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Failure::new(bounded(&text))
}

/// An error status, with HQ's `Retry-After` and the start of its body.
async fn refused(mut response: reqwest::Response) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Read no further than an error needs.
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= super::wire::MAX_TEXT {
            break;
        }
    }
    let body = String::from_utf8_lossy(&body);
    Failure {
        error: bounded(&format!("HQ answered {status}: {}", body.trim())),
        retry_after,
    }
}
