//! The loading pipeline: read the main file and its drop-ins, merge them, load the device
//! profiles, then validate into [`Settings`].
//!
//! Problems of the first stages (unreadable files, TOML syntax, unknown keys, wrong types,
//! broken profiles) stop loading before validation, because validating a half-read configuration
//! reports errors that are not really there ("unknown profile" for a profile file that merely
//! failed to parse). Within a stage, every file is still read so all its problems are reported.

use std::path::Path;

use super::error::ConfigError;
use super::fleet::{overlay, FleetApplied, FleetDocument};
use super::profile::load_profiles;
use super::raw::RawConfig;
use super::settings::Settings;
use super::source::{read_merged, Merged, Report};
use super::validate::validate;

/// Loads, merges and validates the configuration at `path`, its `config.d/*.toml` drop-ins and
/// the device profiles (built-in plus `drivers.d/*.toml`), both folders beside `path`.
///
/// On failure the error lists every problem found, one `PATH:LINE:COL: message` per line.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_fleet(path, None).map(|loaded| loaded.settings)
}

/// A configuration loaded with HQ's part joined to it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The whole configuration in force: the local files and HQ's entries.
    pub settings: Settings,
    /// What HQ's document added and what clashed, when one was given.
    pub fleet: Option<FleetApplied>,
}

/// [`load`], with HQ's campaigns, flows, answer codes and skip reasons (`fleet`, when given)
/// joined to the local files before validation (`config::fleet`): the one path a start, a
/// SIGHUP reload and a document fetched from HQ all take, so HQ's part is checked by the code
/// that checks the local file, together with it.
pub fn load_with_fleet(path: &Path, fleet: Option<&FleetDocument>) -> Result<Loaded, ConfigError> {
    let mut report = Report::default();
    let Some(Merged {
        raw: merged,
        base_dir,
        files,
        main_file,
    }) = read_merged::<RawConfig>(&mut report, path)
    else {
        return report.finish_failed();
    };
    let profiles = load_profiles(&mut report, Some(&base_dir.join("drivers.d")));

    let Some(mut raw) = merged else {
        return report.finish_failed();
    };
    if report.problem_count() > 0 {
        return report.finish_failed();
    }
    let applied = fleet.map(|document| overlay(&mut report, &mut raw, document));
    if report.problem_count() > 0 {
        return report.finish_failed();
    }
    let settings = validate(
        &mut report,
        raw,
        main_file,
        path,
        &base_dir,
        files,
        profiles,
    );
    match settings {
        Some(settings) if report.problem_count() == 0 => Ok(Loaded {
            settings,
            fleet: applied,
        }),
        _ => report.finish_failed(),
    }
}
