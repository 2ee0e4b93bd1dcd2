//! Configuration errors: one [`Diagnostic`] per problem, each pointing at a file, line and column.
//!
//! Loading collects every problem it can find before giving up, so an operator fixes a config
//! file in one pass instead of one error per run. [`ConfigError`] displays them one per line as
//! `PATH:LINE:COL: message`, the format editors and `grep -n` users already know.

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column (columns count characters, not bytes, so CJK text lines up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
}

/// One problem found while loading the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in (built-in profiles show as `built-in:drivers/NAME.toml`).
    pub path: PathBuf,
    /// Where in the file; `None` when the problem is with the file as a whole (cannot read it).
    pub position: Option<Position>,
    /// What is wrong: lowercase, no trailing period, naming the key and what is expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                p.line,
                p.column,
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Every problem found while loading a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, by file (in loading order) and position within the file.
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// Wraps a non-empty list of diagnostics.
    pub(crate) fn new(diagnostics: Vec<Diagnostic>) -> Self {
        debug_assert!(
            !diagnostics.is_empty(),
            "a config error needs at least one diagnostic"
        );
        ConfigError { diagnostics }
    }

    /// Every problem found, sorted by file (in loading order) and position.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_one_line_per_diagnostic() {
        let error = ConfigError::new(vec![
            Diagnostic {
                path: PathBuf::from("/etc/posgw/posgw.toml"),
                position: Some(Position { line: 3, column: 1 }),
                message: "unknown key 'x' in [gateway]".into(),
            },
            Diagnostic {
                path: PathBuf::from("/etc/posgw/config.d/a.toml"),
                position: None,
                message: "cannot read file".into(),
            },
        ]);
        assert_eq!(
            error.to_string(),
            "/etc/posgw/posgw.toml:3:1: unknown key 'x' in [gateway]\n/etc/posgw/config.d/a.toml: cannot read file"
        );
        assert_eq!(error.diagnostics().len(), 2);
    }
}
