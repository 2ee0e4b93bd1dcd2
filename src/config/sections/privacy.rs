//! `[privacy]`: how customers are named (docs/configuration.md): the table as written, how a
//! drop-in merges over it, its settings, and the validation between them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{mergeable_table, Located, Report};

mergeable_table! {
    /// `[privacy]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawPrivacy {
        /// The key file that turns member ids into references.
        pub customer_key_file: Option<Located<String>>,
    }
}

/// `[privacy]`: how customers are named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacySettings {
    /// The key that turns member ids into references; without it no customer is named.
    pub customer_key_file: Option<PathBuf>,
}

/// Validates `[privacy]`: the key file, when named, must be a readable, non-empty file.
pub(crate) fn validate(
    report: &mut Report,
    raw: Option<&Located<RawPrivacy>>,
    base_dir: &Path,
) -> Option<PrivacySettings> {
    let Some(file) = raw.and_then(|raw| raw.value.customer_key_file.as_ref()) else {
        return Some(PrivacySettings::default());
    };
    let path = check::secret_file(
        report,
        base_dir,
        file,
        "'customer_key_file' in [privacy]",
        true,
    )?;
    Some(PrivacySettings {
        customer_key_file: Some(path),
    })
}
