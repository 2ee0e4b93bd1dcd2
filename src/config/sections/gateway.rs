//! `[gateway]`: who this gateway is (`store`, `id`) and where it keeps its journal and state
//! (`data_dir`, with `flush`, the longest an accepted record waits for fsync): the table as
//! written, how a drop-in merges over it, its settings, and the validation between them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::check::{self, ID_EXTRA};
use crate::config::source::{mergeable_table, DurationText, Located, Report};

/// `[gateway] data_dir` when not set.
const DEFAULT_DATA_DIR: &str = "/var/lib/posgw";
/// `[gateway] flush` when not set.
const DEFAULT_FLUSH: Duration = Duration::from_millis(50);
/// `[gateway] flush`: from fsync-every-record to a window that still bounds what a crash loses.
const FLUSH_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(10);
/// Characters allowed in a store code besides ASCII letters and digits.
const STORE_EXTRA: &[char] = &['-', '_'];

mergeable_table! {
    /// `[gateway]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawGateway {
        /// Store code; required.
        pub store: Option<Located<String>>,
        /// Gateway id; default: the host name.
        pub id: Option<Located<String>>,
        /// Journal and state folder; default `/var/lib/posgw`.
        pub data_dir: Option<Located<String>>,
        /// Longest wait for fsync; default `"50ms"`.
        pub flush: Option<DurationText>,
    }
}

/// `[gateway]`: who this gateway is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Store code, `[A-Za-z0-9_-]{1,64}`; required.
    pub store: String,
    /// Gateway id, `[A-Za-z0-9_.-]{1,64}`; default: the host name.
    pub id: String,
    /// Journal and state folder; default `/var/lib/posgw`; relative paths resolve against the config file's folder.
    pub data_dir: PathBuf,
    /// Longest time an accepted record may wait for fsync; default 50ms; zero = fsync each record.
    pub flush: Duration,
}

/// Validates `[gateway]`; it is required (with `store`), so `None` also when it is missing.
pub(crate) fn validate(
    report: &mut Report,
    raw: Option<&Located<RawGateway>>,
    main_file: usize,
    base_dir: &Path,
) -> Option<GatewaySettings> {
    let Some(raw) = raw else {
        report.error(
            &report.file_start(main_file),
            "missing [gateway] section (it needs at least 'store')",
        );
        return None;
    };
    let table = &raw.span;
    let gateway = &raw.value;
    let store = match &gateway.store {
        Some(store) => check::identifier(report, store, "'store' in [gateway]", STORE_EXTRA),
        None => {
            report.error(
                table,
                "missing 'store' in [gateway] (the store code, like \"WZ-LC-001\")",
            );
            None
        }
    };
    let id = match &gateway.id {
        Some(id) => check::identifier(report, id, "'id' in [gateway]", ID_EXTRA),
        None => {
            match host_name() {
                Some(name) if check::is_identifier(&name, ID_EXTRA) => Some(name),
                Some(name) => {
                    report.error(
                    table,
                    format!("'id' in [gateway] defaults to the host name '{name}', which is not a valid id (1 to 64 of A-Z a-z 0-9 '-' '_' '.'); set 'id'"),
                );
                    None
                }
                None => {
                    report.error(table, "'id' in [gateway] defaults to the host name, which cannot be read; set 'id'");
                    None
                }
            }
        }
    };
    let data_dir = match &gateway.data_dir {
        Some(dir) => check::state_folder(report, base_dir, dir, "'data_dir' in [gateway]"),
        None => Some(PathBuf::from(DEFAULT_DATA_DIR)),
    };
    let flush = match &gateway.flush {
        Some(flush) => check::duration_in(report, flush, "'flush' in [gateway]", FLUSH_RANGE),
        None => Some(DEFAULT_FLUSH),
    };
    Some(GatewaySettings {
        store: store?,
        id: id?,
        data_dir: data_dir?,
        flush: flush?,
    })
}

/// This machine's host name, the default gateway id.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call; gethostname
    // writes at most `len` bytes and we look for the terminating NUL ourselves below.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_readable_here() {
        assert!(host_name().is_some_and(|name| !name.is_empty()));
    }
}
