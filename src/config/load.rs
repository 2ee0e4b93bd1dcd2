//! The loading pipeline: read the main file and its drop-ins, merge them, load the device
//! profiles, then validate into [`Settings`].
//!
//! Problems of the first stages (unreadable files, TOML syntax, unknown keys, wrong types,
//! broken profiles) stop loading before validation, because validating a half-read configuration
//! reports errors that are not really there ("unknown profile" for a profile file that merely
//! failed to parse). Within a stage, every file is still read so all its problems are reported.

use std::path::Path;

use super::error::ConfigError;
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

    let Some(raw) = merged else {
        return report.finish_failed();
    };
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
        Some(settings) if report.problem_count() == 0 => Ok(settings),
        _ => report.finish_failed(),
    }
}
