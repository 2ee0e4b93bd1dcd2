//! The wire side of `POST /v1/batches`: content encoding, decompression with a size guard,
//! and validation of every line of the NDJSON body before anything is stored.
//!
//! Validation is of the envelope (docs/records.md), plus what `/v1/stats` reads from
//! attribution records. The envelope is read into the record format's own
//! [`Envelope`](crate::record::Envelope), which salvage reads records with too; what HQ
//! requires beyond it (`store`, `gateway` and `ts`, which that type leaves optional, included)
//! is checked here. A record is accepted when:
//! - the line is one JSON object (UTF-8), with no `hq_seq` field (HQ adds that on the way out);
//! - `store` is a store code, `gateway` and `epoch` are 1 to 64 of `A-Z a-z 0-9 - _ .` (no `/`),
//!   `seq` is an integer of at least 1, and `id` is exactly `store/gateway/epoch/seq`; this is
//!   what lets the store deduplicate on (store, gateway, epoch) plus a seq range set instead of
//!   an index entry per id;
//! - `kind` is 1 to 32 of `A-Z a-z 0-9 - _` (kinds this receiver does not know are stored and
//!   counted, not refused: a newer gateway must not dead-letter its records here);
//! - `ts` is an RFC 3339 time and `data` is an object;
//! - for `kind = "attribution"`: `data.campaign` is a string, `data.outcome` is one of
//!   `answered` `timeout` `skipped`, and `answer`, `answer_label`, `station`, `clerk`,
//!   `question`, `prompt`, `opened_at`, `receipt` are strings or null and `latency_ms` a
//!   non-negative integer or null;
//! - for `kind = "consultation"`: `data.flow` is a string, `data.outcome` is one of
//!   `completed` `incomplete` `abandoned`, `data.steps` is an array of objects each with a
//!   `key` string (no key twice) and `label`, `at`, `skipped`, `clerk`, `value` strings or
//!   null and `values` an array of strings or null; `id`, `station`, `clerk`, `customer`,
//!   `opened_at`, `receipt` are strings or null, `scans` an array of strings or null,
//!   `held_ms` a non-negative integer or null and `released_by` one of `steps` `timeout`
//!   `closed` `shutdown` `restart` or null. Other fields (`closed_at`) are stored, not read.
//!   Other kinds' `data`, the `consultation_step` records' included, is not checked; a
//!   `sale`'s `receipt`, `clerk`, `consultation` and its lines' `prompt`, `flow`, `campaign`
//!   are read (never refused: a sale that does not read so is simply not *tracked*).
//!
//! Blank lines are skipped; a trailing `\r` is not part of the record. The bytes stored are
//! the line exactly as received otherwise.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::stats::{
    AttributionSummary, ConsultationSummary, SaleSummary, StepStatus, StepSummary, Summary,
};
use crate::record::Envelope;

/// How the request body is compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// No `Content-Encoding`, or `identity`.
    Identity,
    /// `gzip` (also `x-gzip`); concatenated members are read as one stream.
    Gzip,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// Reads a `Content-Encoding` header value; `Err` holds the refused value.
    pub(crate) fn from_header(value: Option<&str>) -> Result<Encoding, String> {
        let Some(value) = value else {
            return Ok(Encoding::Identity);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(value.to_string()),
        }
    }
}

/// Whether a `Content-Type` header value is NDJSON (`application/x-ndjson`, parameters allowed).
pub(crate) fn is_ndjson(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/x-ndjson")
}

/// Why a body could not be decompressed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecompressError {
    /// It inflates to more than the limit (a decompression bomb, or just too big a batch).
    TooLarge,
    /// It is not valid data of its encoding; the text says why.
    Corrupt(String),
    /// The memory budget had no room for its output (503: the gateway retries).
    Busy,
}

/// Decompresses `body`, refusing to produce more than `limit` bytes.
///
/// The output is read through `Read::take(limit + 1)`, so a bomb costs at most `limit + 1`
/// bytes of memory and the time to inflate them, never the size it claims.
///
/// `body` is borrowed for decompressing and only turned into the result when it is not
/// compressed (for `Bytes` from the HTTP layer that is free when nobody else holds it).
#[cfg(test)]
pub(crate) fn decompress<B: AsRef<[u8]> + Into<Vec<u8>>>(
    body: B,
    encoding: Encoding,
    limit: u64,
) -> Result<Vec<u8>, DecompressError> {
    decompress_granted(body, encoding, limit, &mut |_| true)
}

/// [`decompress`], asking `grant` before the output may take more memory: `grant(n)` is
/// called with the output's new allowance in bytes (growing, never past `limit + 1`) and
/// answers whether that much may be held; `false` stops with [`DecompressError::Busy`].
///
/// The first allowance is the size the body states (gzip trailer, zstd frame header) plus one,
/// so an honest body is granted once; a body that lies or states nothing is granted more as it
/// inflates, doubling each time, and the output never holds more than it was granted.
pub(crate) fn decompress_granted<B: AsRef<[u8]> + Into<Vec<u8>>>(
    body: B,
    encoding: Encoding,
    limit: u64,
    grant: &mut dyn FnMut(u64) -> bool,
) -> Result<Vec<u8>, DecompressError> {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => {
            let length = body.as_ref().len() as u64;
            return if length > limit {
                Err(DecompressError::TooLarge)
            } else if !grant(length) {
                Err(DecompressError::Busy)
            } else {
                Ok(body.into())
            };
        }
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body.as_ref())),
        Encoding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(body.as_ref())
                .map_err(|error| DecompressError::Corrupt(format!("zstd: {error}")))?;
            // A frame may ask for a window of up to 2 GiB, and the decoder allocates it up
            // front. Encoders pick windows by level, not by input size, up to 8 MiB below
            // level 20; allow 16 MiB, or the largest body when that is larger (up to zstd's
            // own default limit of 128 MiB).
            let body_log = u64::BITS - limit.saturating_sub(1).leading_zeros();
            let window_log = body_log.clamp(24, 27);
            decoder
                .window_log_max(window_log)
                .map_err(|error| DecompressError::Corrupt(format!("zstd: {error}")))?;
            Box::new(decoder)
        }
    };
    // Growing the output by doubling copies it over and over; both formats usually say how
    // big the result is (a hint only: a bomb may lie, the allowance still bounds it).
    let hint = match encoding {
        Encoding::Gzip => gzip_size_hint(body.as_ref()),
        _ => zstd::zstd_safe::get_frame_content_size(body.as_ref())
            .ok()
            .flatten(),
    };
    let most = limit.saturating_add(1);
    let mut granted = hint
        .map_or(body.as_ref().len() as u64 * 4, |hint| {
            hint.saturating_add(1)
        })
        .clamp(most.min(FIRST_ALLOWANCE), most);
    if !grant(granted) {
        return Err(DecompressError::Busy);
    }
    let name = match encoding {
        Encoding::Gzip => "gzip",
        _ => "zstd",
    };
    let mut out = Vec::with_capacity(usize::try_from(granted).unwrap_or(0));
    let mut reader = reader.take(granted);
    loop {
        reader
            .read_to_end(&mut out)
            .map_err(|error| DecompressError::Corrupt(format!("{name}: {error}")))?;
        if (out.len() as u64) < granted || granted >= most {
            break;
        }
        // The allowance is used up and the stream may go on: ask for twice as much.
        let next = granted.saturating_mul(2).min(most);
        if !grant(next) {
            return Err(DecompressError::Busy);
        }
        out.reserve_exact(usize::try_from(next).unwrap_or(usize::MAX) - out.len());
        reader.set_limit(next - out.len() as u64);
        granted = next;
    }
    if out.len() as u64 > limit {
        return Err(DecompressError::TooLarge);
    }
    Ok(out)
}

/// The smallest first allowance of a compressed body's output.
const FIRST_ALLOWANCE: u64 = 64 * 1024;

/// The uncompressed size a gzip body states in its trailer (modulo 4 GiB; one member only).
fn gzip_size_hint(body: &[u8]) -> Option<u64> {
    let trailer: [u8; 4] = body.get(body.len().checked_sub(4)?..)?.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(trailer)))
}

/// One validated record of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IncomingRecord {
    /// Index in [`IncomingBatch::streams`] of the journal the record comes from.
    pub stream: usize,
    /// The record's `seq` within that journal.
    pub seq: u64,
    /// Index in [`IncomingBatch::kinds`] of the record's `kind`.
    pub kind: usize,
    /// Where the record's line is in [`IncomingBatch::body`].
    pub line: Range<usize>,
    /// The record's `ts`, epoch milliseconds (its store-local day, its backlog).
    pub t: i64,
    /// What the figures need of an attribution, consultation or tracked sale record; `None`
    /// for other records (boxed: a record of another kind then costs 8 bytes here, not the
    /// summary's 200).
    pub summary: Option<Box<Summary>>,
}

/// A whole validated batch, ready for the store.
#[derive(Debug)]
pub(crate) struct IncomingBatch {
    /// The store that posted it (every record carries this code).
    pub store: String,
    /// The decompressed body; records point into it.
    pub body: Vec<u8>,
    /// The records in body order.
    pub records: Vec<IncomingRecord>,
    /// The distinct streams (`store/gateway/epoch`: a record's id without the seq) of the
    /// batch; a batch normally has one, so records refer to them instead of each allocating.
    pub streams: Vec<String>,
    /// The distinct kinds of the batch.
    pub kinds: Vec<String>,
    /// The latest `ts` of the batch, as written, with the instant it stands for.
    pub latest_ts: Option<(DateTime<FixedOffset>, String)>,
    /// When HQ received the batch, if not now: the figures' cache of a PostgreSQL receiver
    /// replays batches received earlier (`hq::storage`).
    pub heard: Option<chrono::DateTime<chrono::Utc>>,
    /// The hq_seq its first record gets, if not the next one: the cache numbers its records
    /// as PostgreSQL did, across gaps left by detached partitions.
    pub first_seq: Option<u64>,
}

/// Why a batch was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A line is not a valid record (400).
    Malformed {
        /// 1-based line number in the decompressed body.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A record belongs to another store than the token's (403).
    WrongStore {
        /// 1-based line number in the decompressed body.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A record line HQ accepted: the shared [`Envelope`], with the fields it leaves optional
/// (`store`, `gateway`, `ts`) checked present, and what HQ read from it.
struct Accepted<'a> {
    /// The record's envelope.
    envelope: Envelope<'a>,
    /// Its `ts`, parsed.
    time: DateTime<FixedOffset>,
    /// What the figures need, for an attribution, consultation or tracked sale record.
    summary: Option<Summary>,
}

impl Accepted<'_> {
    /// The record's store code ([`check_line`] made sure there is one).
    fn store(&self) -> &str {
        self.envelope.store.as_deref().unwrap_or_default()
    }

    /// The record's gateway id (made sure of likewise).
    fn gateway(&self) -> &str {
        self.envelope.gateway.as_deref().unwrap_or_default()
    }

    /// The record's `ts` as written (made sure of likewise).
    fn ts(&self) -> &str {
        self.envelope.ts.as_deref().unwrap_or_default()
    }
}

/// What `/v1/stats` reads of an attribution record's `data`.
#[derive(Deserialize)]
struct AttributionData<'a> {
    /// Campaign id.
    #[serde(borrow)]
    campaign: Cow<'a, str>,
    /// `answered`, `timeout` or `skipped`.
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    /// Option key, or null.
    #[serde(borrow, default)]
    answer: Option<Cow<'a, str>>,
    /// Option label, or null.
    #[serde(borrow, default)]
    answer_label: Option<Cow<'a, str>>,
    /// Station, or null.
    #[serde(borrow, default)]
    station: Option<Cow<'a, str>>,
    /// Clerk, or null.
    #[serde(borrow, default)]
    clerk: Option<Cow<'a, str>>,
    /// The question asked, or null.
    #[serde(borrow, default)]
    question: Option<Cow<'a, str>>,
    /// Milliseconds from opening to the answer, or null.
    #[serde(default)]
    latency_ms: Option<u64>,
    /// The prompt's id, or null.
    #[serde(borrow, default)]
    prompt: Option<Cow<'a, str>>,
    /// When it opened, or null.
    #[serde(borrow, default)]
    opened_at: Option<Cow<'a, str>>,
    /// The receipt of the sale known at resolution, or null.
    #[serde(borrow, default)]
    receipt: Option<Cow<'a, str>>,
}

/// What `/v1/stats` and the checks read of a consultation record's `data`.
#[derive(Deserialize)]
struct ConsultationData<'a> {
    /// Flow id.
    #[serde(borrow)]
    flow: Cow<'a, str>,
    /// `completed`, `incomplete` or `abandoned`.
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    /// One per configured step, in order.
    #[serde(borrow)]
    steps: Vec<ConsultationStep<'a>>,
    /// The consultation's id, or null.
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    /// When it opened, or null.
    #[serde(borrow, default)]
    opened_at: Option<Cow<'a, str>>,
    /// The customer's reference, or null.
    #[serde(borrow, default)]
    customer: Option<Cow<'a, str>>,
    /// Station, or null (checked, not kept).
    #[serde(borrow, default)]
    #[allow(dead_code)]
    station: Option<Cow<'a, str>>,
    /// Who opened it, or null.
    #[serde(borrow, default)]
    clerk: Option<Cow<'a, str>>,
    /// The linked sale's receipt, or null.
    #[serde(borrow, default)]
    receipt: Option<Cow<'a, str>>,
    /// Ids of the flow products' scan records, or null (checked, not kept).
    #[serde(borrow, default)]
    #[allow(dead_code)]
    scans: Option<Vec<Cow<'a, str>>>,
    /// How long the held scan waited, or null.
    #[serde(default)]
    held_ms: Option<u64>,
    /// Why the held scan went on, or null.
    #[serde(borrow, default)]
    released_by: Option<Cow<'a, str>>,
}

/// One step of a consultation record.
#[derive(Deserialize)]
struct ConsultationStep<'a> {
    /// Its key.
    #[serde(borrow)]
    key: Cow<'a, str>,
    /// Its label, or null.
    #[serde(borrow, default)]
    label: Option<Cow<'a, str>>,
    /// When it was done or skipped, or null.
    #[serde(borrow, default)]
    at: Option<Cow<'a, str>>,
    /// The skip reason, or null.
    #[serde(borrow, default)]
    skipped: Option<Cow<'a, str>>,
    /// The value recorded, or null.
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    /// The values of a `multi` step, or null.
    #[serde(borrow, default)]
    values: Option<Vec<Cow<'a, str>>>,
    /// Who did it, or null (checked, not kept).
    #[serde(borrow, default)]
    #[allow(dead_code)]
    clerk: Option<Cow<'a, str>>,
}

/// The outcomes a consultation record may have.
pub(crate) const FLOW_OUTCOMES: [&str; 3] = ["completed", "incomplete", "abandoned"];

/// The `released_by` values a consultation record may have (besides null).
pub(crate) const RELEASED_BY: [&str; 5] = ["steps", "timeout", "closed", "shutdown", "restart"];

/// The outcomes an attribution record may have.
pub(crate) const OUTCOMES: [&str; 3] = ["answered", "timeout", "skipped"];

/// Validates every line of `body` for the store `token_store`; nothing is kept on failure.
///
/// The first problem in line order decides the answer (400 or 403).
pub(crate) fn parse_batch(body: Vec<u8>, token_store: &str) -> Result<IncomingBatch, Rejection> {
    // Sized once: growing by doubling would hold up to twice the records' index for a moment.
    let mut records = Vec::with_capacity(line_count(&body));
    let mut streams: Vec<String> = Vec::new();
    // gateway -> epoch -> index in `streams`, to find a record's stream without building it
    // (a map, not a list search: a batch may carry as many epochs as records).
    let mut stream_index: HashMap<String, HashMap<String, usize>> = HashMap::new();
    // The stream of the previous record: consecutive records nearly always share it.
    let mut last_stream: Option<(usize, Range<usize>, Range<usize>)> = None;
    let mut kinds: Vec<String> = Vec::new();
    let mut kind_index: HashMap<String, usize> = HashMap::new();
    let mut latest_ts: Option<(DateTime<FixedOffset>, String)> = None;
    let mut start = 0;
    let mut line_number = 0;
    while start < body.len() {
        line_number += 1;
        let end = body[start..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(body.len(), |at| start + at);
        let next = end + 1;
        let mut line_end = end;
        if line_end > start && body[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let line = &body[start..line_end];
        if line.iter().all(u8::is_ascii_whitespace) {
            start = next;
            continue;
        }
        let accepted = check_line(line).map_err(|message| Rejection::Malformed {
            line: line_number,
            message,
        })?;
        if accepted.store() != token_store {
            return Err(Rejection::WrongStore {
                line: line_number,
                message: format!(
                    "record of store '{}' on line {line_number}, but the token is store '{token_store}''s",
                    accepted.store()
                ),
            });
        }
        if latest_ts
            .as_ref()
            .is_none_or(|(latest, _)| accepted.time > *latest)
        {
            latest_ts = Some((accepted.time, accepted.ts().to_string()));
        }
        let stream = stream_of(&accepted, &mut streams, &mut stream_index, &mut last_stream);
        let kind = match kind_index.get(accepted.envelope.kind.as_ref()) {
            Some(&index) => index,
            None => {
                kinds.push(accepted.envelope.kind.to_string());
                kind_index.insert(accepted.envelope.kind.to_string(), kinds.len() - 1);
                kinds.len() - 1
            }
        };
        records.push(IncomingRecord {
            stream,
            seq: accepted.envelope.seq,
            kind,
            line: start..line_end,
            t: accepted.time.timestamp_millis(),
            summary: accepted.summary.map(Box::new),
        });
        start = next;
    }
    Ok(IncomingBatch {
        store: token_store.to_string(),
        body,
        records,
        streams,
        kinds,
        latest_ts,
        heard: None,
        first_seq: None,
    })
}

/// The index in `streams` of the record's stream, added when new. Constant time per record
/// however many streams the batch has: the previous record's stream is tried first (the
/// common case, compared without hashing), then a map by gateway and epoch.
fn stream_of(
    record: &Accepted<'_>,
    streams: &mut Vec<String>,
    index: &mut HashMap<String, HashMap<String, usize>>,
    last: &mut Option<(usize, Range<usize>, Range<usize>)>,
) -> usize {
    let (store, gateway, epoch) = (record.store(), record.gateway(), &*record.envelope.epoch);
    // A stream string is `store/gateway/epoch`; `last` holds where gateway and epoch are in it.
    if let Some((at, gateway_at, epoch_at)) = last.as_ref() {
        let text = &streams[*at];
        if text[gateway_at.clone()] == *gateway && text[epoch_at.clone()] == *epoch {
            return *at;
        }
    }
    let gateway_start = store.len() + 1;
    let epoch_start = gateway_start + gateway.len() + 1;
    let ranges = (
        gateway_start..epoch_start - 1,
        epoch_start..epoch_start + epoch.len(),
    );
    let found = index
        .get(gateway)
        .and_then(|epochs| epochs.get(epoch))
        .copied();
    let at = match found {
        Some(at) => at,
        None => {
            streams.push(format!("{store}/{gateway}/{epoch}"));
            let at = streams.len() - 1;
            index
                .entry(gateway.to_string())
                .or_default()
                .insert(epoch.to_string(), at);
            at
        }
    };
    *last = Some((at, ranges.0, ranges.1));
    at
}

/// Fewer bytes than any valid record line: its field names and punctuation alone
/// (`{"id":"","store":"",...,"data":{}}`) take 77.
const MIN_RECORD_BYTES: usize = 64;

/// The most records `body` can hold: its lines (a last line without a newline counts), and
/// no more than fit at [`MIN_RECORD_BYTES`] each (a body of blank lines holds none).
fn line_count(body: &[u8]) -> usize {
    let lines =
        body.iter().filter(|&&byte| byte == b'\n').count() + usize::from(!body.ends_with(b"\n"));
    lines.min(body.len() / MIN_RECORD_BYTES + 1)
}

/// Memory [`parse_batch`] takes for `body` besides the body itself, before attribution
/// summaries: the records' index, sized by lines.
pub(crate) fn parse_size(body: &[u8]) -> u64 {
    (line_count(body) * std::mem::size_of::<IncomingRecord>()) as u64
}

impl IncomingBatch {
    /// Memory this batch holds, body and index and summaries (an estimate within a few %).
    pub(crate) fn memory_size(&self) -> u64 {
        let summaries: usize = self
            .records
            .iter()
            .filter_map(|record| record.summary.as_deref())
            .map(Summary::memory_size)
            .sum();
        (self.body.capacity()
            + self.records.capacity() * std::mem::size_of::<IncomingRecord>()
            + summaries
            + self
                .streams
                .iter()
                .map(|s| s.capacity() + 24)
                .sum::<usize>()) as u64
    }
}

/// The instant (epoch ms) of a stored record line and the summary HQ keeps of it (checked as
/// at ingest; `None` for records it does not summarise), for re-summarising stored records.
pub(crate) fn stored_record(line: &[u8]) -> Result<(i64, Option<Summary>), String> {
    check_line(line).map(|accepted| (accepted.time.timestamp_millis(), accepted.summary))
}

/// Checks one non-blank line; the error says what is wrong with it.
fn check_line(line: &[u8]) -> Result<Accepted<'_>, String> {
    // A struct also deserialises from a JSON array; the contract wants objects.
    if line.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err("not a JSON object".to_string());
    }
    let envelope: Envelope = serde_json::from_slice(line).map_err(|_| explain::<Envelope>(line))?;
    let store = required(&envelope.store, "store")?;
    let gateway = required(&envelope.gateway, "gateway")?;
    let ts = required(&envelope.ts, "ts")?;
    if envelope.hq_seq.is_some() {
        return Err("'hq_seq' is set by HQ and must not be sent".to_string());
    }
    let part = |value: &str, what: &str, extra: &[char]| {
        let ok = (1..=64).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "'{what}' must be 1 to 64 of A-Z a-z 0-9 {}, found '{value}'",
                extra
                    .iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
    };
    part(store, "store", &['-', '_'])?;
    part(gateway, "gateway", &['-', '_', '.'])?;
    part(&envelope.epoch, "epoch", &['-', '_', '.'])?;
    if envelope.seq == 0 {
        return Err("'seq' must be at least 1".to_string());
    }
    if !id_matches(
        &envelope.id,
        [store, gateway, &envelope.epoch],
        envelope.seq,
    ) {
        return Err(format!(
            "'id' must be store/gateway/epoch/seq of the record ('{}/{}/{}/{}'), found '{}'",
            store, gateway, envelope.epoch, envelope.seq, envelope.id
        ));
    }
    let kind_ok = (1..=32).contains(&envelope.kind.len())
        && envelope
            .kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !kind_ok {
        return Err(format!(
            "'kind' must be 1 to 32 of A-Z a-z 0-9 '-' '_', found '{}'",
            envelope.kind
        ));
    }
    let time = DateTime::parse_from_rfc3339(ts)
        .map_err(|_| format!("'ts' must be an RFC 3339 time, found '{ts}'"))?;
    if !envelope.data.get().starts_with('{') {
        return Err("'data' must be a JSON object".to_string());
    }
    let summary = match envelope.kind.as_ref() {
        "attribution" => Some(Summary::Attribution(check_attribution(
            store,
            &time,
            envelope.data,
        )?)),
        "consultation" => Some(Summary::Consultation(check_consultation(
            store,
            &time,
            envelope.data,
        )?)),
        "sale" => tracked_sale(store, &time, envelope.data).map(Summary::Sale),
        _ => None,
    };
    Ok(Accepted {
        envelope,
        time,
        summary,
    })
}

/// A field the contract requires and the shared [`Envelope`] leaves optional (salvage does
/// without it); the message is serde's for a missing field.
fn required<'b>(field: &'b Option<Cow<'_, str>>, name: &str) -> Result<&'b str, String> {
    field
        .as_deref()
        .ok_or_else(|| format!("missing field '{name}'"))
}

/// Whether `id` is exactly `store/gateway/epoch/seq` (checked without building the string:
/// this runs for every record).
fn id_matches(id: &str, [store, gateway, epoch]: [&str; 3], seq: u64) -> bool {
    let rest = id
        .strip_prefix(store)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(gateway))
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(epoch))
        .and_then(|rest| rest.strip_prefix('/'));
    // Digits only and no leading zero, so "042" or "+42" do not pass for 42.
    rest.is_some_and(|text| {
        !text.starts_with('0')
            && text.bytes().all(|byte| byte.is_ascii_digit())
            && text.parse::<u64>() == Ok(seq)
    })
}

/// Checks an attribution record's `data` and keeps what the statistics need.
fn check_attribution(
    store: &str,
    time: &DateTime<FixedOffset>,
    data: &RawValue,
) -> Result<AttributionSummary, String> {
    let data: AttributionData = serde_json::from_str(data.get()).map_err(|_| {
        let explained = explain::<AttributionData>(data.get().as_bytes());
        format!("attribution 'data': {explained}")
    })?;
    if !OUTCOMES.contains(&data.outcome.as_ref()) {
        return Err(format!(
            "attribution 'data.outcome' must be one of answered, timeout, skipped, found '{}'",
            data.outcome
        ));
    }
    Ok(AttributionSummary {
        store: store.to_string(),
        campaign: data.campaign.into_owned(),
        outcome: data.outcome.into_owned(),
        answer: data.answer.map(Cow::into_owned),
        answer_label: data.answer_label.map(Cow::into_owned),
        station: data.station.map(Cow::into_owned),
        clerk: data.clerk.map(Cow::into_owned),
        question: data.question.map(Cow::into_owned),
        latency_ms: data.latency_ms,
        t: time.timestamp_millis(),
        offset_minutes: time.offset().local_minus_utc() / 60,
        prompt: data.prompt.map(Cow::into_owned),
        opened_at: data.opened_at.map(Cow::into_owned),
        receipt: data.receipt.map(Cow::into_owned),
    })
}

/// Checks a consultation record's `data` and keeps what the statistics need: each step as
/// done (`at` set, not skipped), skipped (a reason set) or missing (`at` null).
fn check_consultation(
    store: &str,
    time: &DateTime<FixedOffset>,
    data: &RawValue,
) -> Result<ConsultationSummary, String> {
    let data: ConsultationData = serde_json::from_str(data.get()).map_err(|_| {
        let explained = explain::<ConsultationData>(data.get().as_bytes());
        format!("consultation 'data': {explained}")
    })?;
    if !FLOW_OUTCOMES.contains(&data.outcome.as_ref()) {
        return Err(format!(
            "consultation 'data.outcome' must be one of completed, incomplete, abandoned, found '{}'",
            data.outcome
        ));
    }
    if let Some(released_by) = &data.released_by {
        if !RELEASED_BY.contains(&released_by.as_ref()) {
            return Err(format!(
                "consultation 'data.released_by' must be one of steps, timeout, closed, shutdown, \
                 restart or null, found '{released_by}'"
            ));
        }
    }
    let mut steps: Vec<StepSummary> = Vec::with_capacity(data.steps.len());
    for step in data.steps {
        // A flow has at most 32 steps: a list search is cheaper than a set.
        if steps.iter().any(|seen| seen.key == step.key) {
            return Err(format!(
                "consultation 'data.steps': step '{}' appears twice",
                step.key
            ));
        }
        let status = if step.skipped.is_some() {
            StepStatus::Skipped
        } else if step.at.is_some() {
            StepStatus::Done
        } else {
            StepStatus::Missing
        };
        steps.push(StepSummary {
            key: step.key.into_owned(),
            label: step.label.map(Cow::into_owned),
            status,
            reason: step.skipped.map(Cow::into_owned),
            value: step.value.map(Cow::into_owned),
            values: step
                .values
                .unwrap_or_default()
                .into_iter()
                .map(Cow::into_owned)
                .collect(),
        });
    }
    Ok(ConsultationSummary {
        store: store.to_string(),
        flow: data.flow.into_owned(),
        outcome: data.outcome.into_owned(),
        clerk: data.clerk.map(Cow::into_owned),
        steps,
        held_ms: data.held_ms,
        released_by: data.released_by.map(Cow::into_owned),
        t: time.timestamp_millis(),
        offset_minutes: time.offset().local_minus_utc() / 60,
        id: data.id.map(Cow::into_owned),
        opened_at: data.opened_at.map(Cow::into_owned),
        customer: data.customer.map(Cow::into_owned),
        receipt: data.receipt.map(Cow::into_owned),
    })
}

/// What the traceability join reads of a sale record's `data`; everything else is skipped.
#[derive(Deserialize)]
struct SaleLinks<'a> {
    /// The receipt number, or null.
    #[serde(borrow, default)]
    receipt: Option<Cow<'a, str>>,
    /// The clerk, or null.
    #[serde(borrow, default)]
    clerk: Option<Cow<'a, str>>,
    /// The linked consultation, or absent.
    #[serde(borrow, default)]
    consultation: Option<Cow<'a, str>>,
    /// The lines' links.
    #[serde(borrow, default)]
    lines: Vec<LineLinks<'a>>,
}

/// What the join reads of a sale line.
#[derive(Deserialize)]
struct LineLinks<'a> {
    /// The linked prompt, or null.
    #[serde(borrow, default)]
    prompt: Option<Cow<'a, str>>,
    /// The flow whose product it is, or absent.
    #[serde(borrow, default)]
    flow: Option<Cow<'a, str>>,
    /// The campaign whose product it is, or absent.
    #[serde(borrow, default)]
    campaign: Option<Cow<'a, str>>,
}

/// The summary of a sale record when it is *tracked* (a line names a prompt, flow or
/// campaign, or the sale a consultation); `None` for any other sale. Sales are not validated
/// beyond the envelope: one whose `data` does not read as a sale is not tracked (and logged).
fn tracked_sale(store: &str, time: &DateTime<FixedOffset>, data: &RawValue) -> Option<SaleSummary> {
    let text = data.get();
    if !may_link(text) {
        return None;
    }
    let links: SaleLinks = match serde_json::from_str(text) {
        Ok(links) => links,
        Err(error) => {
            tracing::debug!(%error, "a sale's data does not read as a sale; not tracked");
            return None;
        }
    };
    let tracked = links.consultation.is_some()
        || links
            .lines
            .iter()
            .any(|line| line.prompt.is_some() || line.flow.is_some() || line.campaign.is_some());
    if !tracked {
        return None;
    }
    let mut prompts: Vec<String> = Vec::new();
    for prompt in links.lines.into_iter().filter_map(|line| line.prompt) {
        if !prompts.iter().any(|seen| *seen == prompt) {
            prompts.push(prompt.into_owned());
        }
    }
    Some(SaleSummary {
        store: store.to_string(),
        t: time.timestamp_millis(),
        receipt: links.receipt.map(Cow::into_owned),
        clerk: links.clerk.map(Cow::into_owned),
        prompts,
        consultation: links.consultation.map(Cow::into_owned),
        traced: None,
    })
}

/// Whether a sale's `data` may link something, before paying for its parse (most sales link
/// nothing, and a sale is a fifth of the records). The gateway writes `flow`, `campaign` and
/// `consultation` only when they have a value, and `prompt` on every line, null when
/// unlinked, in compact JSON: a few substring looks (vectorised) settle that; `prompt` in
/// other spacing gets the slower look for a string value.
fn may_link(text: &str) -> bool {
    if ["\"flow\"", "\"campaign\"", "\"consultation\""]
        .iter()
        .any(|key| text.contains(key))
    {
        return true;
    }
    if !text.contains("\"prompt\"") {
        return false;
    }
    if text.contains("\"prompt\":\"") {
        return true;
    }
    !text.contains("\"prompt\":null") && has_string_value(text, "\"prompt\"")
}

/// Whether `text` holds `key` (with its quotes) followed by `:` and a string (spaces
/// allowed): a cheap, over-eager test that a JSON object may give the key a string value.
fn has_string_value(text: &str, key: &str) -> bool {
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        rest = &rest[at + key.len()..];
        let after = rest.trim_start();
        if let Some(value) = after.strip_prefix(':') {
            if value.trim_start().starts_with('"') {
                return true;
            }
        }
    }
    false
}

/// Explains why `json` did not deserialise as `T`, naming the field (the slow path: errors only).
fn explain<'a, T: Deserialize<'a>>(json: &'a [u8]) -> String {
    // Parse again with path tracking, which the fast path does without.
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let Err(error) = serde_path_to_error::deserialize::<_, T>(&mut deserializer) else {
        return "not valid JSON".to_string();
    };
    let path = error.path().to_string();
    let inner = error.into_inner();
    let message = plain(&inner);
    if inner.is_syntax() || inner.is_eof() {
        format!("not valid JSON: {message}")
    } else if path == "." || path.is_empty() {
        message
    } else {
        format!("'{path}': {message}")
    }
}

/// A serde_json error message without its "at line L column C" tail and with plain quotes.
fn plain(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decompression_asks_before_growing_and_stops_when_refused() {
        let plain = vec![b'x'; 1_000_000];
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&plain).expect("gzip");
        let mut body = gzip.finish().expect("gzip");
        // An honest trailer: one grant, of the stated size plus one.
        let mut grants = Vec::new();
        let out = decompress_granted(&body[..], Encoding::Gzip, 2_000_000, &mut |n| {
            grants.push(n);
            true
        })
        .expect("inflates");
        assert_eq!(out, plain);
        assert_eq!(grants, [1_000_001]);
        // A size that misleads (a second, empty member states 0): grants double from the
        // smallest first one, never past limit + 1.
        let mut empty = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        empty.write_all(b"").expect("gzip");
        body.extend(empty.finish().expect("gzip"));
        grants.clear();
        let out = decompress_granted(&body[..], Encoding::Gzip, 2_000_000, &mut |n| {
            grants.push(n);
            true
        })
        .expect("inflates");
        assert_eq!(out.len(), plain.len());
        assert_eq!(grants.first(), Some(&FIRST_ALLOWANCE));
        assert!(grants
            .windows(2)
            .all(|pair| pair[1] == (pair[0] * 2).min(2_000_001)));
        assert!(out.capacity() as u64 <= *grants.last().expect("grants"));
        // Refused past 100 kB: busy, not too large.
        let refused =
            decompress_granted(&body[..], Encoding::Gzip, 2_000_000, &mut |n| n <= 100_000);
        assert_eq!(refused, Err(DecompressError::Busy));
        let too_large = decompress_granted(&body[..], Encoding::Gzip, 500_000, &mut |_| true);
        assert_eq!(too_large, Err(DecompressError::TooLarge));
    }

    fn record(store: &str, seq: u64, kind: &str, data: &str) -> String {
        format!(
            r#"{{"id":"{store}/gw-1/7f3a9c21/{seq}","store":"{store}","gateway":"gw-1","epoch":"7f3a9c21","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","clock":{{"boot":"b","mono_ms":1,"synced":true}},"kind":"{kind}","data":{data}}}"#
        )
    }

    fn malformed(body: &str) -> (usize, String) {
        match parse_batch(body.as_bytes().to_vec(), "S1") {
            Err(Rejection::Malformed { line, message }) => (line, message),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn parses_records_and_keeps_line_bytes() {
        let first = record("S1", 1, "scan", r#"{"code":"x"}"#);
        let second = record(
            "S1",
            2,
            "attribution",
            r#"{"campaign":"c1","outcome":"answered","answer":"doctor","latency_ms":1500,"station":"till-1","clerk":null}"#,
        );
        let body = format!("{first}\r\n\n{second}\n");
        let batch = parse_batch(body.clone().into_bytes(), "S1").expect("valid");
        assert_eq!(batch.records.len(), 2);
        assert_eq!(
            &body.as_bytes()[batch.records[0].line.clone()],
            first.as_bytes()
        );
        assert_eq!(
            &body.as_bytes()[batch.records[1].line.clone()],
            second.as_bytes()
        );
        assert_eq!(batch.streams, ["S1/gw-1/7f3a9c21"]);
        assert_eq!(batch.kinds, ["scan", "attribution"]);
        assert_eq!((batch.records[0].kind, batch.records[1].kind), (0, 1));
        assert_eq!(batch.records[1].seq, 2);
        let Some(Summary::Attribution(summary)) = batch.records[1].summary.as_deref() else {
            panic!("an attribution summary");
        };
        assert_eq!(summary.campaign, "c1");
        assert_eq!(summary.latency_ms, Some(1500));
        assert_eq!(summary.clerk, None);
        assert_eq!(
            batch.latest_ts.map(|(_, text)| text).as_deref(),
            Some("2026-11-27T16:01:02.345+08:00")
        );
    }

    #[test]
    fn bad_lines_say_which_and_why() {
        let good = record("S1", 1, "scan", "{}");
        assert_eq!(
            malformed(&format!("{good}\nnot json\n")),
            (2, "not a JSON object".into())
        );
        assert_eq!(malformed("[1,2]"), (1, "not a JSON object".into()));
        let (line, message) = malformed(&format!("{good}\n{{\"id\":\"x\"\n"));
        assert_eq!(line, 2);
        assert!(message.starts_with("not valid JSON"), "{message}");
        let (_, message) = malformed(&good.replace(r#""seq":1,"#, ""));
        assert_eq!(message, "missing field 'seq'");
        let (_, message) = malformed(&good.replace(r#""seq":1"#, r#""seq":"1""#));
        assert!(
            message.starts_with("'seq': invalid type: string"),
            "{message}"
        );
        for id in [
            "S1/gw-1/7f3a9c21/2",
            "S1/gw-1/7f3a9c21/01",
            "S1/gw-2/7f3a9c21/1",
            "S1/gw-1/7f3a9c21/1/",
        ] {
            let (_, message) = malformed(&good.replace("S1/gw-1/7f3a9c21/1", id));
            assert!(
                message.starts_with("'id' must be store/gateway/epoch/seq"),
                "{id}: {message}"
            );
        }
        let (_, message) = malformed(
            &good
                .replace(r#""seq":1"#, r#""seq":0"#)
                .replace("/1\"", "/0\""),
        );
        assert_eq!(message, "'seq' must be at least 1");
        let (_, message) = malformed(&good.replace("2026-11-27T16", "yesterday"));
        assert!(
            message.starts_with("'ts' must be an RFC 3339 time"),
            "{message}"
        );
        let (_, message) = malformed(&record("S1", 1, "scan", "[1]"));
        assert_eq!(message, "'data' must be a JSON object");
        let (_, message) = malformed(&record("S1", 1, "sc an", "{}"));
        assert!(message.starts_with("'kind' must be"), "{message}");
        let (_, message) = malformed(&good.replace("\"kind\"", "\"hq_seq\":5,\"kind\""));
        assert_eq!(message, "'hq_seq' is set by HQ and must not be sent");
        let (_, message) = malformed(&record(
            "S1",
            1,
            "attribution",
            r#"{"campaign":"c","outcome":"maybe"}"#,
        ));
        assert!(
            message.contains("'data.outcome' must be one of"),
            "{message}"
        );
        let (_, message) = malformed(&record("S1", 1, "attribution", r#"{"outcome":"timeout"}"#));
        assert_eq!(message, "attribution 'data': missing field 'campaign'");
        let (_, message) = malformed(&record(
            "S1",
            1,
            "attribution",
            r#"{"campaign":"c","outcome":"answered","latency_ms":-5}"#,
        ));
        assert!(
            message.starts_with("attribution 'data': 'latency_ms': invalid value"),
            "{message}"
        );
    }

    /// A consultation record's `data` with `steps` (as JSON) and the given outcome.
    fn consultation_data(outcome: &str, steps: &str, released_by: &str) -> String {
        format!(
            r#"{{"id":"k7q2m9","flow":"rx-5step","station":"till-1","clerk":"c-17","customer":null,"opened_at":"2026-11-27T16:00:00.000+08:00","closed_at":"2026-11-27T16:05:00.000+08:00","outcome":"{outcome}","steps":{steps},"scans":["S1/gw-1/7f3a9c21/1"],"receipt":"R-1","held_ms":4100,"released_by":{released_by}}}"#
        )
    }

    #[test]
    fn consultations_are_summarised_step_by_step() {
        let steps = r#"[
            {"key":"consult","label":"客户问诊","at":"2026-11-27T16:01:00.000+08:00","value":null,"values":null,"skipped":null,"clerk":"c-17"},
            {"key":"symptoms","label":"症状记录","at":"2026-11-27T16:02:00.000+08:00","value":null,"values":null,"skipped":"客户明确拒绝","clerk":"c-17"},
            {"key":"guidance","label":"用药指导","at":null,"value":null,"values":null,"skipped":null,"clerk":null}]"#
            .replace('\n', "");
        let line = record(
            "S1",
            1,
            "consultation",
            &consultation_data("incomplete", &steps, r#""steps""#),
        );
        let batch = parse_batch(line.into_bytes(), "S1").expect("valid");
        let Some(Summary::Consultation(summary)) = batch.records[0].summary.as_deref() else {
            panic!("a consultation summary");
        };
        assert_eq!(summary.flow, "rx-5step");
        assert_eq!(summary.outcome, "incomplete");
        assert_eq!(summary.clerk.as_deref(), Some("c-17"));
        assert_eq!(
            (summary.held_ms, summary.released_by.as_deref()),
            (Some(4100), Some("steps"))
        );
        let statuses: Vec<(&str, StepStatus, Option<&str>)> = summary
            .steps
            .iter()
            .map(|step| (step.key.as_str(), step.status, step.reason.as_deref()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("consult", StepStatus::Done, None),
                ("symptoms", StepStatus::Skipped, Some("客户明确拒绝")),
                ("guidance", StepStatus::Missing, None),
            ]
        );
        assert_eq!(summary.steps[1].label.as_deref(), Some("症状记录"));
        assert_eq!(
            (summary.id.as_deref(), summary.receipt.as_deref()),
            (Some("k7q2m9"), Some("R-1"))
        );
        assert_eq!(
            summary.opened_at.as_deref(),
            Some("2026-11-27T16:00:00.000+08:00")
        );
        assert_eq!(
            (summary.t, summary.offset_minutes),
            (1_795_766_462_345, 480)
        );
        // The smallest consultation the checks take; consultation_step data is not read.
        let minimal = record(
            "S1",
            1,
            "consultation",
            r#"{"flow":"f","outcome":"abandoned","steps":[]}"#,
        );
        assert!(parse_batch(minimal.into_bytes(), "S1").is_ok());
        let step = record("S1", 1, "consultation_step", r#"{"anything":1}"#);
        let batch = parse_batch(step.into_bytes(), "S1").expect("valid");
        assert!(batch.records[0].summary.is_none());
    }

    #[test]
    fn bad_consultations_say_why() {
        let bad = |data: &str| malformed(&record("S1", 1, "consultation", data)).1;
        let step = r#"{"key":"consult","label":"客户问诊","at":null,"skipped":null,"clerk":null}"#;
        assert_eq!(
            bad(&consultation_data("maybe", "[]", "null")),
            "consultation 'data.outcome' must be one of completed, incomplete, abandoned, found 'maybe'"
        );
        assert_eq!(
            bad(r#"{"outcome":"completed","steps":[]}"#),
            "consultation 'data': missing field 'flow'"
        );
        assert_eq!(
            bad(r#"{"flow":"f","outcome":"completed"}"#),
            "consultation 'data': missing field 'steps'"
        );
        let message = bad(r#"{"flow":"f","outcome":"completed","steps":{"consult":1}}"#);
        assert!(
            message.starts_with("consultation 'data': 'steps': invalid type: map"),
            "{message}"
        );
        let message = bad(r#"{"flow":"f","outcome":"completed","steps":[{"label":"x"}]}"#);
        assert_eq!(
            message,
            "consultation 'data': 'steps[0]': missing field 'key'"
        );
        let message = bad(r#"{"flow":"f","outcome":"completed","steps":[{"key":"a","at":5}]}"#);
        assert!(
            message.starts_with("consultation 'data': 'steps[0].at': invalid type: integer"),
            "{message}"
        );
        assert_eq!(
            bad(&consultation_data(
                "completed",
                &format!("[{step},{step}]"),
                "null"
            )),
            "consultation 'data.steps': step 'consult' appears twice"
        );
        assert!(bad(&consultation_data("completed", "[]", r#""later""#))
            .starts_with("consultation 'data.released_by' must be one of steps, timeout,"));
        let message = bad(&consultation_data("completed", "[]", "null").replace("4100", "-1"));
        assert!(
            message.starts_with("consultation 'data': 'held_ms': invalid value"),
            "{message}"
        );
        let message = bad(&consultation_data("completed", "[]", "null").replace(r#""R-1""#, "7"));
        assert!(
            message.starts_with("consultation 'data': 'receipt': invalid type"),
            "{message}"
        );
    }

    #[test]
    fn only_sales_that_link_something_are_tracked() {
        let summary = |data: &str| {
            let batch = parse_batch(record("S1", 1, "sale", data).into_bytes(), "S1")
                .expect("a sale is never refused");
            batch.records[0].summary.as_deref().cloned()
        };
        let plain = r#"{"receipt":"R-1","clerk":"c-1","lines":[{"sku":"1","prompt":null}]}"#;
        assert_eq!(summary(plain), None);
        // Not readable as a sale: stored, not tracked.
        assert_eq!(summary(r#"{"lines":"oops","consultation":"k"}"#), None);
        let Some(Summary::Sale(sale)) = summary(
            r#"{"receipt":"R-1","clerk":"c-1","lines":[{"sku":"1","prompt": "p-1"},{"sku":"2","prompt":"p-1","flow":"f1"},{"sku":"3","prompt":"p-2"}]}"#,
        ) else {
            panic!("tracked");
        };
        assert_eq!(sale.prompts, ["p-1", "p-2"], "each prompt once");
        assert_eq!(
            (sale.receipt.as_deref(), sale.clerk.as_deref(), sale.traced),
            (Some("R-1"), Some("c-1"), None)
        );
        assert_eq!(sale.t, 1_795_766_462_345);
        let Some(Summary::Sale(sale)) =
            summary(r#"{"receipt":null,"lines":[{"sku":"1","campaign":"c1"}]}"#)
        else {
            panic!("a campaign product is tracked");
        };
        assert!(sale.prompts.is_empty() && sale.receipt.is_none());
        let Some(Summary::Sale(sale)) = summary(r#"{"lines":[],"consultation":"k-1"}"#) else {
            panic!("a sale with a consultation is tracked");
        };
        assert_eq!(sale.consultation.as_deref(), Some("k-1"));
        assert!(may_link(r#"{"lines":[{"prompt" : "p-1"}]}"#), "any spacing");
        assert!(!may_link(r#"{"lines":[{"prompt":null},{"prompt":null}]}"#));
        assert!(!may_link(r#"{"lines":[{"prompt" : null}]}"#));
        assert!(has_string_value(r#"{"a" : "x", "flow" :	"f"}"#, "\"flow\""));
        assert!(!has_string_value(r#"{"flow":null,"x":"flow"}"#, "\"flow\""));
    }

    #[test]
    fn another_stores_record_is_refused() {
        let body = format!(
            "{}\n{}\n",
            record("S1", 1, "scan", "{}"),
            record("S2", 1, "scan", "{}")
        );
        match parse_batch(body.into_bytes(), "S1") {
            Err(Rejection::WrongStore { line: 2, message }) => {
                assert!(message.contains("store 'S2'"), "{message}")
            }
            other => panic!("expected wrong store, got {other:?}"),
        }
    }

    #[test]
    fn empty_body_is_an_empty_batch() {
        let batch = parse_batch(b"\n\n".to_vec(), "S1").expect("valid");
        assert!(batch.records.is_empty());
    }

    #[test]
    fn encodings_and_content_types() {
        assert_eq!(Encoding::from_header(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("GZIP")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::from_header(Some("zstd")), Ok(Encoding::Zstd));
        assert_eq!(Encoding::from_header(Some("br")), Err("br".to_string()));
        assert_eq!(
            Encoding::from_header(Some("gzip, zstd")),
            Err("gzip, zstd".to_string())
        );
        assert!(is_ndjson("application/x-ndjson"));
        assert!(is_ndjson("Application/X-NDJSON; charset=utf-8"));
        assert!(!is_ndjson("application/json"));
    }

    #[test]
    fn decompression_is_bounded() {
        let plain = vec![b'a'; 100_000];
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&plain).expect("compress");
        let gzip = gzip.finish().expect("compress");
        let zstd = zstd::encode_all(plain.as_slice(), 3).expect("compress");
        for (body, encoding) in [(gzip, Encoding::Gzip), (zstd, Encoding::Zstd)] {
            assert_eq!(
                decompress(body.clone(), encoding, 100_000).map(|v| v.len()),
                Ok(100_000)
            );
            assert_eq!(
                decompress(body, encoding, 99_999),
                Err(DecompressError::TooLarge)
            );
        }
        assert_eq!(
            decompress(plain.clone(), Encoding::Identity, 99_999),
            Err(DecompressError::TooLarge)
        );
        assert!(matches!(
            decompress(b"not gzip".to_vec(), Encoding::Gzip, 1000),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            decompress(b"not zstd".to_vec(), Encoding::Zstd, 1000),
            Err(DecompressError::Corrupt(_))
        ));
    }
}
