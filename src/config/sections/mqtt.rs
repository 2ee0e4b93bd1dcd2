//! `[mqtt]`: the store's broker, for mqtt devices and the prompt channel: the table as written,
//! how a drop-in merges over it, its settings, and the validation between them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{mergeable_table, Located, Report, SizeValue};

/// `[mqtt] max_message` when not set (1MiB).
const DEFAULT_MAX_MESSAGE: u64 = 1024 * 1024;
/// `[mqtt] max_message`: ordinary sales fit in 1KiB; each message read whole is held in memory,
/// so at most 16MiB.
const MAX_MESSAGE_RANGE: RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

mergeable_table! {
    /// `[mqtt]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawMqtt {
        /// Broker URL; required when the section is present.
        pub url: Option<Located<String>>,
        /// Broker user name.
        pub username: Option<Located<String>>,
        /// File holding the broker password.
        pub password_file: Option<Located<String>>,
        /// Largest device message read whole (a size).
        pub max_message: Option<SizeValue>,
    }
}

/// `[mqtt]`: the store's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// User name, when the broker wants one.
    pub username: Option<String>,
    /// File holding the password (read at connect time, never logged).
    pub password_file: Option<PathBuf>,
    /// Largest message on a device topic that is read whole (its topic and payload, in bytes);
    /// a larger one is recorded by its size as a `bad_frame` and acknowledged. Default 1 MiB,
    /// from 1 KiB to 16 MiB.
    pub max_message: usize,
}

/// Validates a present `[mqtt]` (without one there is no broker).
pub(crate) fn validate(
    report: &mut Report,
    raw: &Located<RawMqtt>,
    base_dir: &Path,
) -> Option<MqttSettings> {
    let mqtt = &raw.value;
    let problems_before = report.problem_count();
    let url = match &mqtt.url {
        Some(url) => match check::parse_address(&url.value, &["mqtt", "mqtts"]) {
            Ok(address) if address.path.is_empty() || address.path == "/" => {
                Some(url.value.clone())
            }
            Ok(_) => {
                report.error(
                    &url.span,
                    format!(
                        "'url' in [mqtt] must be mqtt://host[:port] without a path, found '{}'",
                        url.value
                    ),
                );
                None
            }
            Err(error) => {
                report.error(
                    &url.span,
                    format!("'url' in [mqtt] {error}, found '{}'", url.value),
                );
                None
            }
        },
        None => {
            report.error(
                &raw.span,
                "missing 'url' in [mqtt] (like \"mqtt://127.0.0.1:1883\")",
            );
            None
        }
    };
    let username = mqtt
        .username
        .as_ref()
        .and_then(|name| check::non_empty(report, name, "'username' in [mqtt]"));
    let password_file = mqtt.password_file.as_ref().and_then(|file| {
        if mqtt.username.is_none() {
            // MQTT 3.1.1 sends a password only with a user name (the connection would fail).
            report.error(
                &file.span,
                "'password_file' in [mqtt] needs 'username' in [mqtt]: MQTT sends no password without a user name",
            );
            return None;
        }
        check::secret_file(report, base_dir, file, "'password_file' in [mqtt]", false)
    });
    let max_message = match &mqtt.max_message {
        None => Some(DEFAULT_MAX_MESSAGE),
        Some(value) => check::size_in(report, value, "'max_message' in [mqtt]", MAX_MESSAGE_RANGE),
    };
    if report.problem_count() > problems_before {
        return None;
    }
    Some(MqttSettings {
        url: url?,
        username,
        password_file,
        // At most MAX_MAX_MESSAGE: fits any usize.
        max_message: usize::try_from(max_message?).unwrap_or(usize::MAX),
    })
}
