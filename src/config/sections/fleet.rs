//! `[fleet]`: campaigns and flows from HQ (docs/hq-protocol.md, "Fleet"): where the gateway
//! fetches what HQ targets at its store and posts its heartbeats, how often, and with which
//! token: the table as written, how a drop-in merges over it, its settings and its validation.
//!
//! The section is optional; present (even empty) it turns the fleet task on. `url` defaults to
//! `[uplink]`'s HTTP endpoint with its `/v1/batches` replaced by `/v1/fleet` (or, for another
//! path, HQ's origin plus `/v1/fleet`), and `token_file` to `[uplink]`'s: one HQ, one token.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{mergeable_table, DurationText, Located, Report};

use super::uplink::RawUplink;

/// `[fleet] poll` when not set.
pub const DEFAULT_POLL: Duration = Duration::from_secs(60);
/// `[fleet] poll`: a second (tests, a lab) to a day.
const POLL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// The path of HQ's record endpoint that a derived `url` replaces.
const BATCHES_PATH: &str = "/v1/batches";
/// The path of HQ's fleet endpoints.
const FLEET_PATH: &str = "/v1/fleet";

mergeable_table! {
    /// `[fleet]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawFleet {
        /// HQ's fleet base URL (`…/v1/fleet`); default derived from `[uplink] endpoint`.
        pub url: Option<Located<String>>,
        /// How often to fetch and send a heartbeat; default `"60s"`.
        pub poll: Option<DurationText>,
        /// File holding the store's bearer token; default `[uplink] token_file`.
        pub token_file: Option<Located<String>>,
    }
}

/// `[fleet]`: configuration from HQ and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// HQ's fleet base URL, without a trailing `/`: the gateway fetches `{url}/{store}/config`
    /// and posts `{url}/{store}/heartbeat`.
    pub url: String,
    /// How often to fetch and send a heartbeat (each wait drawn within ±10 %); default 60 s.
    pub poll: Duration,
    /// File holding the store's bearer token (read at every request, so a rotated token is
    /// picked up without a restart).
    pub token_file: PathBuf,
}

/// Validates a present `[fleet]` against the `[uplink]` it may take its URL and token from.
pub(crate) fn validate(
    report: &mut Report,
    raw: &Located<RawFleet>,
    uplink: Option<&Located<RawUplink>>,
    base_dir: &Path,
) -> Option<FleetSettings> {
    let fleet = &raw.value;
    let before = report.problem_count();
    let url = match &fleet.url {
        Some(url) => match check::parse_address(&url.value, &["http", "https"]) {
            Ok(_) => Some(url.value.trim_end_matches('/').to_string()),
            Err(error) => {
                report.error(
                    &url.span,
                    format!("'url' in [fleet] {error}, found '{}'", url.value),
                );
                None
            }
        },
        None => {
            let endpoint = uplink.and_then(|uplink| uplink.value.endpoint.as_ref());
            match endpoint.and_then(|endpoint| derived_url(&endpoint.value)) {
                Some(url) => Some(url),
                None => {
                    report.error(
                        &raw.span,
                        "missing 'url' in [fleet]: there is no HTTP [uplink] endpoint to take \
                         HQ's address from (like \"https://hq.example.com/v1/fleet\")",
                    );
                    None
                }
            }
        }
    };
    let poll = match &fleet.poll {
        Some(value) => check::duration_in(report, value, "'poll' in [fleet]", POLL_RANGE),
        None => Some(DEFAULT_POLL),
    };
    let token_file = match (
        &fleet.token_file,
        uplink.and_then(|u| u.value.token_file.as_ref()),
    ) {
        (Some(file), _) => {
            check::secret_file(report, base_dir, file, "'token_file' in [fleet]", true)
        }
        // Checked (and reported) by [uplink]'s own validation.
        (None, Some(file)) => check::path(report, base_dir, file, "'token_file' in [uplink]"),
        (None, None) => {
            report.error(
                &raw.span,
                "missing 'token_file' in [fleet]: HQ wants the store's token, and [uplink] has \
                 none to share",
            );
            None
        }
    };
    if report.problem_count() > before {
        return None;
    }
    Some(FleetSettings {
        url: url?,
        poll: poll?,
        token_file: token_file?,
    })
}

/// `{origin}/v1/fleet` from an HTTP uplink endpoint, keeping a path prefix before
/// `/v1/batches` (HQ behind a proxy at `https://hq/posgw/v1/batches`); `None` for MQTT.
fn derived_url(endpoint: &str) -> Option<String> {
    let address = check::parse_address(endpoint, &["http", "https"]).ok()?;
    let path = address.path.split(['?', '#']).next().unwrap_or_default();
    let origin = &endpoint[..endpoint.len() - address.path.len()];
    let prefix = path
        .trim_end_matches('/')
        .strip_suffix(BATCHES_PATH)
        .unwrap_or_default();
    Some(format!("{origin}{prefix}{FLEET_PATH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a store config with `extra` appended; the token file `hq.token` exists.
    fn load(extra: &str) -> Result<crate::config::Settings, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hq.token"), "tok\n").expect("token");
        let path = dir.path().join("posgw.toml");
        let text = format!(
            "[gateway]\nstore = \"S1\"\nid = \"gw\"\ndata_dir = \"{}\"\n{extra}",
            dir.path().join("data").display()
        );
        std::fs::write(&path, text).expect("write config");
        crate::config::load(&path).map_err(|error| {
            error
                .to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn an_empty_section_takes_hq_and_token_from_the_uplink() {
        let settings = load(
            "[uplink]\nendpoint = \"http://hq:7390/v1/batches\"\ntoken_file = \"hq.token\"\n[fleet]\n",
        )
        .expect("loads");
        let fleet = settings.fleet.expect("fleet on");
        assert_eq!(fleet.url, "http://hq:7390/v1/fleet");
        assert_eq!(fleet.poll, DEFAULT_POLL);
        assert!(fleet.token_file.ends_with("hq.token"));
        assert!(
            load("").expect("loads").fleet.is_none(),
            "off without [fleet]"
        );
        let settings = load(
            "[fleet]\nurl = \"https://hq.example.com/v1/fleet/\"\npoll = \"5s\"\ntoken_file = \"hq.token\"\n",
        )
        .expect("loads");
        let fleet = settings.fleet.expect("fleet on");
        assert_eq!(fleet.url, "https://hq.example.com/v1/fleet");
        assert_eq!(fleet.poll, Duration::from_secs(5));
    }

    #[test]
    fn mistakes_are_positioned() {
        let error = load("[fleet]\npoll = \"0s\"\n").expect_err("refused");
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 3, "{error}");
        assert!(
            lines[0].starts_with("DIR/posgw.toml:5:1: missing 'url' in [fleet]"),
            "{error}"
        );
        assert!(
            lines[1].starts_with("DIR/posgw.toml:5:1: missing 'token_file' in [fleet]"),
            "{error}"
        );
        assert!(
            lines[2].starts_with("DIR/posgw.toml:6:8: 'poll' in [fleet]"),
            "{error}"
        );
        let error = load(
            "[uplink]\nendpoint = \"mqtt://broker:1883/hq\"\ntoken_file = \"hq.token\"\n[fleet]\n",
        )
        .expect_err("refused");
        assert!(error.contains("missing 'url' in [fleet]"), "{error}");
    }

    #[test]
    fn the_url_is_derived_from_an_http_uplink() {
        assert_eq!(
            derived_url("https://hq.example.com/v1/batches").as_deref(),
            Some("https://hq.example.com/v1/fleet")
        );
        assert_eq!(
            derived_url("http://10.0.0.5:7390/posgw/v1/batches/").as_deref(),
            Some("http://10.0.0.5:7390/posgw/v1/fleet")
        );
        assert_eq!(
            derived_url("https://hq.example.com/ingest?x=1").as_deref(),
            Some("https://hq.example.com/v1/fleet")
        );
        assert_eq!(
            derived_url("http://hq:7390").as_deref(),
            Some("http://hq:7390/v1/fleet")
        );
        assert_eq!(derived_url("mqtts://broker:8883/hq/records"), None);
    }
}
