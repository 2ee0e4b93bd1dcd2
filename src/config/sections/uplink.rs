//! `[uplink]`: forwarding records to HQ (endpoint, token, batching, compression) and the
//! journal's size cap: the table as written, how a drop-in merges over it, its settings, and the
//! validation between them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{mergeable_table, DurationText, Located, Report, SizeValue};

/// `[uplink] batch_max_records` when not set.
const DEFAULT_BATCH_MAX_RECORDS: usize = 1000;
/// `[uplink] batch_max_bytes` when not set (1MiB).
const DEFAULT_BATCH_MAX_BYTES: u64 = 1024 * 1024;
/// `[uplink] batch_max_age` when not set.
const DEFAULT_BATCH_MAX_AGE: Duration = Duration::from_secs(1);
/// `[uplink] max_journal_bytes` when not set (2GiB).
const DEFAULT_MAX_JOURNAL_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// `[uplink] batch_max_age`.
const BATCH_MAX_AGE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(600);
/// `[uplink] batch_max_records`.
const BATCH_MAX_RECORDS_RANGE: RangeInclusive<usize> = 1..=100_000;
/// `[uplink] batch_max_bytes`: one record at least, and a body HQ can take.
const BATCH_MAX_BYTES_RANGE: RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
/// `[uplink] max_journal_bytes`: room for dozens of scan records at least (a quota below one
/// record would evict every scan as it arrives), and far from any arithmetic overflow at most.
pub(crate) const MAX_JOURNAL_BYTES_RANGE: RangeInclusive<u64> =
    32 * 1024..=64 * 1024 * 1024 * 1024 * 1024;

mergeable_table! {
    /// `[uplink]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawUplink {
        /// HQ endpoint; required when the section is present.
        pub endpoint: Option<Located<String>>,
        /// File holding the bearer token.
        pub token_file: Option<Located<String>>,
        /// Most records per batch; default 1000.
        pub batch_max_records: Option<Located<i64>>,
        /// Most bytes per batch; default `"1MiB"`.
        pub batch_max_bytes: Option<SizeValue>,
        /// Longest a record waits for its batch; default `"1s"`.
        pub batch_max_age: Option<DurationText>,
        /// `none`, `gzip` or `zstd`; default `gzip`.
        pub compression: Option<Located<String>>,
        /// Journal size cap; default `"2GiB"`.
        pub max_journal_bytes: Option<SizeValue>,
    }
}

/// `[uplink]`: forwarding to HQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// `http(s)://host[:port]/path` or `mqtt(s)://host[:port]/topic`.
    pub endpoint: String,
    /// File holding the bearer token, when HQ wants one.
    pub token_file: Option<PathBuf>,
    /// Most records per batch; default 1000; at least 1.
    pub batch_max_records: usize,
    /// Most bytes per (uncompressed) batch; default 1MiB; at least 1.
    pub batch_max_bytes: u64,
    /// Longest a record waits for its batch to fill; default 1s.
    pub batch_max_age: Duration,
    /// Body compression; default gzip.
    pub compression: Compression,
    /// Journal size beyond which the oldest sent-or-not records are evicted; default 2GiB.
    pub max_journal_bytes: u64,
}

/// How batches are compressed on the way to HQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Sent as is.
    None,
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: zstd`.
    Zstd,
}

impl Compression {
    /// The config spelling: `none`, `gzip` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Validates a present `[uplink]` (without one, records stay in the journal).
pub(crate) fn validate(
    report: &mut Report,
    raw: &Located<RawUplink>,
    base_dir: &Path,
) -> Option<UplinkSettings> {
    let uplink = &raw.value;
    let problems_before = report.problem_count();
    let endpoint = match &uplink.endpoint {
        Some(endpoint) => {
            match check::parse_address(&endpoint.value, &["http", "https", "mqtt", "mqtts"]) {
                Ok(address) if address.scheme.starts_with("mqtt") && address.path.len() < 2 => {
                    report.error(
                    &endpoint.span,
                    format!("'endpoint' in [uplink] needs a topic for MQTT: mqtt://host:port/topic, found '{}'", endpoint.value),
                );
                    None
                }
                Ok(_) => Some(endpoint.value.clone()),
                Err(error) => {
                    report.error(
                        &endpoint.span,
                        format!("'endpoint' in [uplink] {error}, found '{}'", endpoint.value),
                    );
                    None
                }
            }
        }
        None => {
            report.error(
                &raw.span,
                "missing 'endpoint' in [uplink] (like \"https://hq.example.com/v1/batches\")",
            );
            None
        }
    };
    let token_file = uplink.token_file.as_ref().and_then(|file| {
        check::secret_file(report, base_dir, file, "'token_file' in [uplink]", true)
    });
    let batch_max_records = match &uplink.batch_max_records {
        Some(value) => match usize::try_from(value.value) {
            Ok(count) if BATCH_MAX_RECORDS_RANGE.contains(&count) => Some(count),
            _ => {
                report.error(
                    &value.span,
                    format!(
                        "'batch_max_records' in [uplink] must be from {} to {}, found {}",
                        BATCH_MAX_RECORDS_RANGE.start(),
                        BATCH_MAX_RECORDS_RANGE.end(),
                        value.value
                    ),
                );
                None
            }
        },
        None => Some(DEFAULT_BATCH_MAX_RECORDS),
    };
    let batch_max_bytes = uplink_size(
        report,
        uplink.batch_max_bytes.as_ref(),
        "batch_max_bytes",
        DEFAULT_BATCH_MAX_BYTES,
        BATCH_MAX_BYTES_RANGE,
    );
    let batch_max_age = match &uplink.batch_max_age {
        Some(value) => check::duration_in(
            report,
            value,
            "'batch_max_age' in [uplink]",
            BATCH_MAX_AGE_RANGE,
        ),
        None => Some(DEFAULT_BATCH_MAX_AGE),
    };
    let compression = match &uplink.compression {
        Some(value) => check::choice(
            report,
            value,
            "'compression' in [uplink]",
            &[
                ("none", Compression::None),
                ("gzip", Compression::Gzip),
                ("zstd", Compression::Zstd),
            ],
        ),
        None => Some(Compression::Gzip),
    };
    let max_journal_bytes = uplink_size(
        report,
        uplink.max_journal_bytes.as_ref(),
        "max_journal_bytes",
        DEFAULT_MAX_JOURNAL_BYTES,
        MAX_JOURNAL_BYTES_RANGE,
    );
    if report.problem_count() > problems_before {
        return None;
    }
    Some(UplinkSettings {
        endpoint: endpoint?,
        token_file,
        batch_max_records: batch_max_records?,
        batch_max_bytes: batch_max_bytes?,
        batch_max_age: batch_max_age?,
        compression: compression?,
        max_journal_bytes: max_journal_bytes?,
    })
}

/// A size key of `[uplink]`, within its range.
fn uplink_size(
    report: &mut Report,
    value: Option<&SizeValue>,
    key: &str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    check::size_in(report, value, &format!("'{key}' in [uplink]"), range)
}
