//! The uplink: forwards journal records to HQ, at least once, in `seq` order.
//!
//! One task owns the send cursor (the journal position up to which records were handed to HQ).
//! It is the only code that talks to HQ, and it is the only reason records leave the journal:
//!
//! 1. Wait until a durable record exists after the cursor ([`JournalHandle::wait_durable_beyond`];
//!    the journal only ever hands out durable records, so nothing a crash could take back is sent).
//! 2. Collect a batch: up to `batch_max_records` records and `batch_max_bytes` bytes, waiting at
//!    most `batch_max_age` for it to fill.
//! 3. Send it as NDJSON made of the records' stored bytes (never re-encoded), compressed as
//!    configured, through the endpoint's transport ([`http`] or [`mqtt`]).
//! 4. Act on HQ's answer exactly as docs/hq-protocol.md says:
//!    - accepted (2xx): remove the records from the journal, advance the cursor;
//!    - transient (408, 429, 5xx, timeouts, connection errors) and refused credentials (401,
//!      403): keep everything, retry the same records with exponential backoff and jitter,
//!      never sooner than a `Retry-After`;
//!    - too large (413): split the batch in halves and send them in order;
//!    - rejected (400, 422): split until the single offending record is found; it moves to the
//!      journal's dead-letter set with HQ's reason (kept, counted, dumpable), the rest goes on.
//!
//! A crash between HQ's 2xx and the removal re-sends those records after the restart; HQ drops
//! them by `id`. Shutdown abandons an in-flight request: its records stay in the journal.
//!
//! The task publishes an [`UplinkStatus`] on a `watch` channel for `/api/v1/status`.

mod delivery;
pub mod http;
pub mod mqtt;

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::{DateTime, Local};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Compression, UplinkSettings};
use crate::journal::{JournalError, JournalHandle, StoredRecord};
use crate::metrics::Metrics;

pub use delivery::Delivery;

/// First retry delay after a failed delivery.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between retries of our own choosing (a `Retry-After` may ask for longer).
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest `Retry-After` we honour: a misconfigured HQ must not park a store for a day.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// What the uplink is doing, for `/api/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UplinkState {
    /// No `[uplink]` configured: records stay in the journal.
    #[default]
    Disabled,
    /// Everything durable has been delivered.
    Idle,
    /// A batch is on its way.
    Sending,
    /// The last attempt failed; waiting to retry.
    Retrying,
}

/// The uplink's published state.
#[derive(Debug, Clone, Default)]
pub struct UplinkStatus {
    /// What it is doing.
    pub state: UplinkState,
    /// When HQ last answered 2xx.
    pub last_success_at: Option<DateTime<Local>>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Records HQ accepted since start.
    pub sent_records: u64,
    /// Delivery attempts that failed and were retried, since start.
    pub retries: u64,
    /// Records moved to the dead-letter set since start.
    pub dead_lettered: u64,
    /// `ts` of the oldest record not yet delivered, when there is one.
    pub oldest_pending_ts: Option<String>,
}

/// The running uplink.
pub struct UplinkHandle {
    /// Its published state.
    pub status: watch::Receiver<UplinkStatus>,
    /// Ends when the gateway stops.
    pub task: JoinHandle<()>,
}

/// The read side for a gateway without `[uplink]`.
pub fn disabled() -> watch::Receiver<UplinkStatus> {
    watch::channel(UplinkStatus::default()).1
}

/// How batches reach HQ, chosen by the endpoint's scheme.
enum Transport {
    /// `http://` or `https://`.
    Http(http::HttpTransport),
    /// `mqtt://` or `mqtts://`.
    Mqtt(mqtt::MqttTransport),
}

impl Transport {
    async fn deliver(&mut self, body: &Bytes, compression: Compression) -> Delivery {
        match self {
            Transport::Http(http) => http.deliver(body, compression).await,
            Transport::Mqtt(mqtt) => mqtt.deliver(body).await,
        }
    }
}

/// Starts the uplink task for the gateway `store`/`gateway`.
pub fn spawn(
    settings: UplinkSettings,
    identity: (&str, &str),
    journal: JournalHandle,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<UplinkHandle> {
    let transport = if settings.endpoint.starts_with("mqtt") {
        Transport::Mqtt(mqtt::MqttTransport::new(&settings, identity.0, identity.1)?)
    } else {
        Transport::Http(http::HttpTransport::new(&settings)?)
    };
    let (status_tx, status) = watch::channel(UplinkStatus {
        state: UplinkState::Idle,
        ..UplinkStatus::default()
    });
    let uplink = Uplink {
        settings,
        journal,
        metrics,
        transport,
        status: status_tx,
        stop,
        removing: None,
        ndjson: Vec::new(),
    };
    let task = tokio::spawn(uplink.run());
    Ok(UplinkHandle { status, task })
}

/// Why the uplink loop ended.
enum Stopped {
    /// The gateway is shutting down.
    Shutdown,
    /// The journal failed or closed.
    Journal(JournalError),
}

impl From<JournalError> for Stopped {
    fn from(error: JournalError) -> Self {
        Stopped::Journal(error)
    }
}

struct Uplink {
    settings: UplinkSettings,
    journal: JournalHandle,
    metrics: Metrics,
    transport: Transport,
    status: watch::Sender<UplinkStatus>,
    stop: CancellationToken,
    /// The journal delete of the last accepted batch, still running.
    removing: Option<JoinHandle<Result<(), JournalError>>>,
    /// Where a batch's NDJSON is put together before it is compressed (kept: its memory is
    /// reused from batch to batch).
    ndjson: Vec<u8>,
}

impl Uplink {
    async fn run(mut self) {
        tracing::info!(endpoint = %self.settings.endpoint, "uplink started");
        loop {
            match self.forward().await {
                Stopped::Shutdown | Stopped::Journal(JournalError::Closed) => {
                    tracing::debug!("uplink stopped");
                    return;
                }
                Stopped::Journal(error) => {
                    // The journal may recover (a full disk freed); the records wait there.
                    tracing::error!(%error, "uplink: journal unavailable; retrying in {RETRY_MAX:?}");
                    self.status.send_modify(|s| {
                        s.state = UplinkState::Retrying;
                        s.last_error = Some(format!("journal unavailable: {error}"));
                    });
                    if self
                        .until_stopped(tokio::time::sleep(RETRY_MAX))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// The forwarding loop; returns only when it must stop.
    async fn forward(&mut self) -> Stopped {
        // Position of the last record handed to HQ (or dead-lettered). Starting from 0 re-reads
        // whatever is still in the journal, which after a crash may include records HQ already
        // has: it drops them by id.
        let mut cursor = 0u64;
        loop {
            let (batch, seen) = match self.next_batch(cursor).await {
                Ok(found) => found,
                Err(stopped) => return stopped,
            };
            let Some(last) = batch.last().map(|record| record.position) else {
                // Everything durable up to `seen` after the cursor is gone from the journal
                // (dead-lettered or evicted): move past it instead of waiting on it forever.
                cursor = cursor.max(seen);
                continue;
            };
            if let Err(stopped) = self.deliver(&batch).await {
                return stopped;
            }
            cursor = last;
            if self.journal.durable_position() <= cursor {
                // Caught up: let the last delete finish so the backlog shows empty.
                if let Some(removing) = self.removing.take() {
                    match removing.await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return Stopped::Journal(error),
                        Err(_) => return Stopped::Journal(JournalError::Closed),
                    }
                }
                self.status.send_modify(|s| {
                    s.state = UplinkState::Idle;
                    s.oldest_pending_ts = None;
                });
            }
        }
    }

    /// Waits for records after `cursor` and collects a batch, giving it up to `batch_max_age`
    /// to fill. Also returns the durable position seen before the last read: when the batch is
    /// empty, nothing up to there is left to send.
    async fn next_batch(&self, cursor: u64) -> Result<(Vec<StoredRecord>, u64), Stopped> {
        let max_records = self.settings.batch_max_records;
        let max_bytes = usize::try_from(self.settings.batch_max_bytes).unwrap_or(usize::MAX);
        self.until_stopped(self.journal.wait_durable_beyond(cursor))
            .await??;
        let deadline = Instant::now() + self.settings.batch_max_age;
        loop {
            let seen = self.journal.durable_position();
            let batch = self.journal.read(cursor, max_records, max_bytes).await?;
            let bytes: usize = batch.iter().map(|r| r.bytes.len() + 1).sum();
            let full = batch.len() >= max_records || bytes >= max_bytes;
            let newest = batch.last().map_or(cursor, |r| r.position);
            if full || Instant::now() >= deadline || batch.is_empty() {
                if let Some(first) = batch.first() {
                    let ts = crate::record::RecordHead::parse(&first.bytes)
                        .and_then(|head| head.ts.map(|ts| ts.into_owned()));
                    self.status.send_modify(|s| s.oldest_pending_ts = ts);
                }
                return Ok((batch, seen));
            }
            // Not full yet: wait for more records or for the batch's age to run out.
            tokio::select! {
                more = self.journal.wait_durable_beyond(newest) => more?,
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stop.cancelled() => return Err(Stopped::Shutdown),
            }
        }
    }

    /// Delivers `batch`, splitting on 413 and bisecting on 400/422; returns once every record
    /// is either accepted by HQ or dead-lettered.
    async fn deliver(&mut self, batch: &[StoredRecord]) -> Result<(), Stopped> {
        let mut pending: VecDeque<Range<usize>> = VecDeque::new();
        pending.push_back(0..batch.len());
        while let Some(range) = pending.pop_front() {
            let records = &batch[range.clone()];
            match self.deliver_with_retry(records).await? {
                Verdict::Accepted => {
                    let last = records[records.len() - 1].position;
                    self.remove_through(last).await?;
                    self.metrics.uplink_sent.inc_by(records.len() as u64);
                    self.status.send_modify(|s| {
                        s.last_success_at = Some(Local::now());
                        s.last_error = None;
                        s.sent_records += records.len() as u64;
                    });
                }
                Verdict::Split(reason) if records.len() == 1 => {
                    // The single record HQ will not take: keep it aside, never drop it.
                    let record = &records[0];
                    tracing::error!(
                        position = record.position,
                        "HQ rejected a record: {reason}; moved to the dead-letter set"
                    );
                    self.journal
                        .move_to_dead(record.position, reason.clone())
                        .await?;
                    self.metrics.uplink_dead.inc();
                    self.status.send_modify(|s| {
                        s.dead_lettered += 1;
                        s.last_error = Some(format!("record dead-lettered: {reason}"));
                    });
                }
                Verdict::Split(_) => {
                    let middle = range.start + range.len() / 2;
                    pending.push_front(middle..range.end);
                    pending.push_front(range.start..middle);
                }
            }
        }
        Ok(())
    }

    /// Removes the records up to `position` (HQ has them) while the next batch is read, encoded
    /// and sent: the journal's delete runs in the background, at most one at a time, and its
    /// failure surfaces at the next call.
    async fn remove_through(&mut self, position: u64) -> Result<(), Stopped> {
        if let Some(previous) = self.removing.take() {
            previous.await.map_err(|_| JournalError::Closed)??;
        }
        let journal = self.journal.clone();
        self.removing = Some(tokio::spawn(async move {
            journal.remove_through(position).await.map(|_| ())
        }));
        Ok(())
    }

    /// Sends `records` until HQ gives a definite answer, backing off on transient failures.
    async fn deliver_with_retry(&mut self, records: &[StoredRecord]) -> Result<Verdict, Stopped> {
        let body = encode(records, self.settings.compression, &mut self.ndjson);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            self.status.send_modify(|s| s.state = UplinkState::Sending);
            let compression = self.settings.compression;
            let delivery =
                until_stopped(&self.stop, self.transport.deliver(&body, compression)).await?;
            match delivery {
                Delivery::Accepted => return Ok(Verdict::Accepted),
                Delivery::TooLarge => {
                    return Ok(Verdict::Split(
                        "the record is larger than the uplink can send (413 or packet limit)"
                            .into(),
                    ))
                }
                Delivery::Rejected(reason) => return Ok(Verdict::Split(reason)),
                Delivery::Retry { error, after } => {
                    let delay = backoff
                        .next()
                        .unwrap_or(RETRY_MAX)
                        .max(after.unwrap_or_default().min(RETRY_AFTER_MAX));
                    tracing::warn!(
                        records = records.len(),
                        "uplink: {error}; retrying in {delay:?}"
                    );
                    self.metrics.uplink_retries.inc();
                    self.status.send_modify(|s| {
                        s.state = UplinkState::Retrying;
                        s.retries += 1;
                        s.last_error = Some(error);
                    });
                    self.until_stopped(tokio::time::sleep(delay)).await?;
                }
            }
        }
    }

    /// Runs `future` unless the gateway stops first.
    async fn until_stopped<T>(
        &self,
        future: impl std::future::Future<Output = T>,
    ) -> Result<T, Stopped> {
        until_stopped(&self.stop, future).await
    }
}

/// Runs `future` unless `stop` fires first.
async fn until_stopped<T>(
    stop: &CancellationToken,
    future: impl std::future::Future<Output = T>,
) -> Result<T, Stopped> {
    tokio::select! {
        value = future => Ok(value),
        () = stop.cancelled() => Err(Stopped::Shutdown),
    }
}

/// What to do with a range of records after HQ's definite answer.
enum Verdict {
    /// Stored at HQ.
    Accepted,
    /// Split the range (or dead-letter its single record) for this reason.
    Split(String),
}

/// The request body: the records' stored bytes as NDJSON, compressed as configured. `ndjson`
/// is scratch space (its memory is reused; a fresh buffer of a batch's size every time was
/// page faults and heap trims).
pub fn encode(records: &[StoredRecord], compression: Compression, ndjson: &mut Vec<u8>) -> Bytes {
    ndjson.clear();
    for record in records {
        ndjson.extend_from_slice(&record.bytes);
        ndjson.push(b'\n');
    }
    let body = match compression {
        Compression::None => ndjson.clone(),
        Compression::Gzip => {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(ndjson.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            let _ = encoder.write_all(ndjson);
            encoder.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(ndjson, 1).unwrap_or_default(),
    };
    Bytes::from(body)
}
