//! Gathering the device profiles: the ones built into the binary from the repository's
//! `drivers/` folder ([`BUILT_IN`]), then those of a `drivers.d/` folder beside the config file,
//! each adding a profile or replacing the built-in one of its name. Each file is read and
//! validated by `validate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::error::ConfigError;
use crate::config::source::{toml_files_in, Report};

use super::settings::ProfileSet;
use super::validate::load_profile;

/// The profiles built into the binary: file name in `drivers/` and its text.
///
/// Add a line here for every new file in `drivers/`; the unit tests check that each parses.
pub(crate) const BUILT_IN: &[(&str, &str)] = &[
    (
        "generic-scanner.toml",
        include_str!("../../../drivers/generic-scanner.toml"),
    ),
    (
        "escpos-tap.toml",
        include_str!("../../../drivers/escpos-tap.toml"),
    ),
    (
        "mqtt-scanner.toml",
        include_str!("../../../drivers/mqtt-scanner.toml"),
    ),
    (
        "json-register.toml",
        include_str!("../../../drivers/json-register.toml"),
    ),
];

impl ProfileSet {
    /// Only the built-in profiles (what a gateway without a `drivers.d/` folder knows).
    pub fn built_in() -> Result<ProfileSet, ConfigError> {
        let mut report = Report::default();
        let profiles = load_profiles(&mut report, None);
        report.finish(profiles)
    }
}

/// Loads the built-in profiles, then every `*.toml` of `drivers_dir` (when given and present).
///
/// A file in `drivers_dir` replaces the built-in profile of the same name; two files there with
/// the same name are an error. Problems go to `report`; broken profiles are left out.
pub(crate) fn load_profiles(report: &mut Report, drivers_dir: Option<&Path>) -> ProfileSet {
    let mut set = ProfileSet::default();
    for (file_name, text) in BUILT_IN {
        let file = report.add_file(
            PathBuf::from(format!("built-in:drivers/{file_name}")),
            text.to_string(),
        );
        if let Some(profile) = load_profile(report, file, file_name, "built-in".to_string()) {
            set.insert(profile);
        }
    }
    let Some(dir) = drivers_dir else { return set };
    // Which drivers.d file defined each name, to catch two files claiming one name.
    let mut defined_here: BTreeMap<String, usize> = BTreeMap::new();
    for path in toml_files_in(report, dir) {
        let Some(file) = report.read_file(&path) else {
            continue;
        };
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(profile) = load_profile(report, file, &file_name, path.display().to_string())
        else {
            continue;
        };
        if let Some(&earlier) = defined_here.get(&profile.name) {
            let earlier = report.path(earlier).display().to_string();
            report.error(
                &report.file_start(file),
                format!("profile '{}' is already defined in {earlier}", profile.name),
            );
            continue;
        }
        defined_here.insert(profile.name.clone(), file);
        set.insert(profile);
    }
    set
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::device_kind::{Role, Transport};
    use crate::config::profile::{DecoderKind, FramingSettings, LineSettings};

    #[test]
    fn every_built_in_profile_loads() {
        let set = ProfileSet::built_in()
            .unwrap_or_else(|error| panic!("built-in profiles broken:\n{error}"));
        assert_eq!(set.names().count(), BUILT_IN.len());
    }

    #[test]
    fn generic_scanner_is_as_contracted() {
        let set = ProfileSet::built_in().expect("built-ins load");
        let profile = set
            .get("generic-scanner")
            .expect("generic-scanner is built in");
        assert_eq!(profile.roles, [Role::Scanner]);
        assert_eq!(profile.transports, [Transport::Serial]);
        assert_eq!(profile.decoder, DecoderKind::Scan);
        assert_eq!(profile.line, LineSettings::default());
        assert_eq!(
            profile.framing,
            FramingSettings {
                cr: true,
                lf: true,
                suffix: None,
                strip_prefix: None,
                idle_gap: Some(Duration::from_millis(80)),
                max_frame: 4096
            }
        );
        assert_eq!(profile.source, "built-in");
        assert!(!profile.requires_passthrough);
        assert!(profile.escpos.is_none());
    }
}
