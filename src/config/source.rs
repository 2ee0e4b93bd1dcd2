//! Source files, positions and the first stage of loading: TOML text into raw structs.
//!
//! Every file that takes part in loading (the main config, its drop-ins, profile files, the
//! built-in profiles) is registered in [`Report`], which owns the file texts and collects
//! [`Diagnostic`]s. Raw structs wrap each value in [`Located`], which remembers the byte span
//! *and* the file it came from, so a value merged in from `config.d/20-x.toml` still reports
//! errors against that file after the merge.
//!
//! The file index reaches [`Located`]'s `Deserialize` impl through a thread-local set for the
//! duration of one `toml` deserialisation ([`Report::parse`]); deserialisation is synchronous,
//! so the thread-local cannot leak into another file.
//!
//! Deserialisation runs through `serde_path_to_error`, which tells us which key an error is
//! about; that turns serde's "unknown field `baudrate`, expected one of …" into
//! `unknown key 'baudrate' in [[device]], did you mean 'baud'?`.
//!
//! It also reads a file with its `config.d/` drop-ins and merges them ([`read_merged`],
//! [`MergeLater`]); `mergeable_table!` gives a section's table its key-by-key merge.

use std::cell::Cell;
use std::ops::Range;
use std::path::{Path, PathBuf};

use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::{ConfigError, Diagnostic, Position};

thread_local! {
    /// Index (in [`Report`]'s file table) of the file being deserialised on this thread.
    static CURRENT_FILE: Cell<usize> = const { Cell::new(0) };
}

/// A byte range in one registered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    /// Index of the file in [`Report`]'s file table.
    pub file: usize,
    /// Byte range within that file's text.
    pub range: Range<usize>,
}

/// A value from a TOML file together with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    /// The deserialised value.
    pub value: T,
    /// Where the value was written (for a table: its header through its last key).
    pub span: Span,
}

/// A duration as written (a string like `"250ms"`), checked in validation.
pub(crate) type DurationText = Located<toml::Value>;
/// A size as written (a string like `"1MiB"` or an integer of bytes), checked in validation.
pub(crate) type SizeValue = Located<toml::Value>;

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The `toml` crate hands out spans through `serde_spanned`'s protocol: asked for a
        // struct of this name, it answers with a map of start, end and value. We speak that
        // protocol ourselves rather than wrapping `Spanned`, because toml has no span for
        // implicit tables (`[escpos.patterns]` creates `escpos`, `gateway.flush = "0s"` creates
        // `gateway`) and answers with the table's own map instead; `Spanned` rejects that.
        use serde_spanned::__unstable::{END_FIELD, NAME, START_FIELD, VALUE_FIELD};
        static FIELDS: [&str; 3] = [START_FIELD, END_FIELD, VALUE_FIELD];
        deserializer.deserialize_struct(NAME, &FIELDS, LocatedVisitor(PhantomData))
    }
}

/// Reads either `serde_spanned`'s start/end/value map or, for an implicit table, the table itself.
struct LocatedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
        use serde_spanned::__unstable::{END_FIELD, START_FIELD, VALUE_FIELD};
        let file = CURRENT_FILE.with(Cell::get);
        let first: Option<String> = map.next_key()?;
        if first.as_deref() != Some(START_FIELD) {
            // An implicit table: its span is unknown, so problems about the table as a whole
            // point at the start of the file; its keys still carry their own positions.
            let value = T::deserialize(MapAccessDeserializer::new(ReplayFirstKey { first, map }))?;
            return Ok(Located {
                value,
                span: Span { file, range: 0..0 },
            });
        }
        let start: usize = map.next_value()?;
        let mut end: Option<usize> = None;
        let mut value: Option<T> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                END_FIELD => end = Some(map.next_value()?),
                VALUE_FIELD => value = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, &[END_FIELD, VALUE_FIELD])),
            }
        }
        let end = end.ok_or_else(|| de::Error::missing_field(END_FIELD))?;
        let value = value.ok_or_else(|| de::Error::missing_field(VALUE_FIELD))?;
        Ok(Located {
            value,
            span: Span {
                file,
                range: start..end,
            },
        })
    }
}

/// A map whose first key was already read: hands that key out again, then the rest.
struct ReplayFirstKey<A> {
    /// The key read ahead, until handed out.
    first: Option<String>,
    /// The rest of the map.
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for ReplayFirstKey<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// One registered file.
#[derive(Debug)]
struct SourceFile {
    /// The path shown in diagnostics.
    path: PathBuf,
    /// The file's text, kept to turn byte offsets into line and column.
    text: String,
}

/// The files taking part in one load, and the problems found in them so far.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Every file registered so far; [`Span::file`] indexes into it.
    files: Vec<SourceFile>,
    /// Problems found so far, each with its sort key: (file index, byte offset).
    problems: Vec<((usize, usize), Diagnostic)>,
    /// Bytes of all files read so far, held under [`MAX_TOTAL_BYTES`].
    bytes_read: u64,
}

/// Largest file [`Report::read_file`] reads: a real configuration, drop-in or profile is a few
/// KiB, and parsing takes tens of times the text's size in memory.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Largest size of all files of one load together (the main file, drop-ins and profiles).
pub(crate) const MAX_TOTAL_BYTES: u64 = 4 * 1024 * 1024;
/// Most `*.toml` files one folder (`config.d/`, `drivers.d/`) may hold.
pub(crate) const MAX_FOLDER_FILES: usize = 256;

/// A file's bytes, read no further than `limit + 1` bytes (more than `limit`: too large).
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl Report {
    /// Registers a file's text and returns its index for [`Span`]s.
    pub fn add_file(&mut self, path: PathBuf, text: String) -> usize {
        self.files.push(SourceFile { path, text });
        self.files.len() - 1
    }

    /// The path a file was registered under.
    pub fn path(&self, file: usize) -> &Path {
        &self.files[file].path
    }

    /// Reads and registers a file; a read failure is recorded as a problem and gives `None`.
    ///
    /// A file over [`MAX_FILE_BYTES`], or one that would take the files of this load over
    /// [`MAX_TOTAL_BYTES`], is refused before it is read whole: parsing TOML takes tens of times
    /// the text's size in memory. A file that is not UTF-8 is refused at its first bad byte.
    pub fn read_file(&mut self, path: &Path) -> Option<usize> {
        let mut bytes = match read_bounded(path, MAX_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.problem_in(path, format!("cannot read file: {error}"));
                return None;
            }
        };
        if bytes.len() as u64 > MAX_FILE_BYTES {
            // Registered up to the limit, so the problem points where reading stopped.
            bytes.truncate(MAX_FILE_BYTES as usize);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let end = text.len();
            let file = self.add_file(path.to_path_buf(), text);
            self.error(
                &Span {
                    file,
                    range: end..end,
                },
                format!(
                    "file is larger than {}, reading stopped here (a configuration or profile file is a few KiB)",
                    super::units::format_size(MAX_FILE_BYTES)
                ),
            );
            return None;
        }
        let total = self.bytes_read + bytes.len() as u64;
        if total > MAX_TOTAL_BYTES {
            self.problem_in(
                path,
                format!(
                    "the configuration files and profiles together are larger than {}",
                    super::units::format_size(MAX_TOTAL_BYTES)
                ),
            );
            return None;
        }
        self.bytes_read = total;
        match String::from_utf8(bytes) {
            Ok(text) => Some(self.add_file(path.to_path_buf(), text)),
            Err(error) => {
                // Registered up to the first bad byte, so the problem gets a line and column.
                let valid = error.utf8_error().valid_up_to();
                let mut bytes = error.into_bytes();
                bytes.truncate(valid);
                let text = String::from_utf8(bytes).unwrap_or_default();
                let file = self.add_file(path.to_path_buf(), text);
                self.error(
                    &Span {
                        file,
                        range: valid..valid,
                    },
                    "file is not UTF-8 text: invalid byte here (save the file as UTF-8)",
                );
                None
            }
        }
    }

    /// Records a problem at a span.
    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        let file = &self.files[span.file];
        let position = position_of(&file.text, span.range.start);
        let diagnostic = Diagnostic {
            path: file.path.clone(),
            position: Some(position),
            message: message.into(),
        };
        self.problems
            .push(((span.file, span.range.start), diagnostic));
    }

    /// Records a problem about a file as a whole (no position).
    pub fn problem_in(&mut self, path: &Path, message: impl Into<String>) {
        // Sorts after the problems of the files registered so far: where it happened in the run.
        let key = (self.files.len(), 0);
        self.problems.push((
            key,
            Diagnostic {
                path: path.to_path_buf(),
                position: None,
                message: message.into(),
            },
        ));
    }

    /// `PATH:LINE:COL` of a span, for messages that refer to a second place ("first defined at …").
    pub fn describe(&self, span: &Span) -> String {
        let file = &self.files[span.file];
        let position = position_of(&file.text, span.range.start);
        format!(
            "{}:{}:{}",
            file.path.display(),
            position.line,
            position.column
        )
    }

    /// A span covering the start of a file, for problems with no better place (a missing section).
    pub fn file_start(&self, file: usize) -> Span {
        Span { file, range: 0..0 }
    }

    /// How many problems were recorded so far.
    pub fn problem_count(&self) -> usize {
        self.problems.len()
    }

    /// The collected problems as an error; call only after recording at least one.
    pub fn finish_failed<T>(mut self) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            // Not reachable by design; an error without a reason would be worse than this one.
            let path = self
                .files
                .first()
                .map(|file| file.path.clone())
                .unwrap_or_default();
            self.problem_in(
                &path,
                "configuration rejected without a recorded reason (a posgw bug)",
            );
        }
        // Validation checks in code order; people read files top to bottom. The sort is stable,
        // so problems at one position keep the order they were found in.
        self.problems.sort_by_key(|(key, _)| *key);
        Err(ConfigError::new(
            self.problems
                .into_iter()
                .map(|(_, diagnostic)| diagnostic)
                .collect(),
        ))
    }

    /// Turns the collected problems into an error, or returns `value` when there are none.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            self.finish_failed()
        }
    }

    /// Deserialises one registered file into `T`, recording a positioned problem on failure.
    pub fn parse<T: for<'de> Deserialize<'de>>(&mut self, file: usize) -> Option<T> {
        let result = {
            let _guard = CurrentFileGuard::set(file);
            let deserializer = toml::Deserializer::new(&self.files[file].text);
            serde_path_to_error::deserialize::<_, T>(deserializer)
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                let path = key_path(error.path());
                let span = Span {
                    file,
                    range: error.inner().span().unwrap_or(0..0),
                };
                let message = describe_toml_error(&path, error.inner().message());
                self.error(&span, message);
                None
            }
        }
    }
}

/// A raw configuration, or one table of it, that a later file (a `config.d` drop-in) can be
/// applied over.
pub(crate) trait MergeLater {
    /// Applies `later` over `self`: tables key by key, arrays of tables appended.
    fn merge(&mut self, later: Self);
}

/// Replaces `earlier` with `later` when `later` was written: one key of a table.
pub(crate) fn overlay<T>(earlier: &mut Option<T>, later: Option<T>) {
    if later.is_some() {
        *earlier = later;
    }
}

/// Declares a config table as written, given as an ordinary struct of `Option` fields (with its
/// derives and serde attributes), and implements [`MergeLater`] for it: each key a later file
/// sets replaces the earlier one ([`overlay`]). Written once, a field is both read and merged,
/// so a new key cannot be forgotten by the merge.
macro_rules! mergeable_table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field: $ty, )*
        }

        impl $crate::config::source::MergeLater for $name {
            fn merge(&mut self, later: Self) {
                $( $crate::config::source::overlay(&mut self.$field, later.$field); )*
            }
        }
    };
}
pub(crate) use mergeable_table;

/// Merges a later table into an earlier one key by key; the earlier table keeps its position.
pub(crate) fn merge_table<T: MergeLater>(
    earlier: &mut Option<Located<T>>,
    later: Option<Located<T>>,
) {
    match (earlier.as_mut(), later) {
        (Some(earlier), Some(later)) => earlier.value.merge(later.value),
        (None, Some(later)) => *earlier = Some(later),
        (_, None) => {}
    }
}

/// Appends a later file's array of tables (`[[device]]`) to an earlier one's.
pub(crate) fn append<T>(earlier: &mut Option<Vec<T>>, later: Option<Vec<T>>) {
    if let Some(later) = later {
        earlier.get_or_insert_with(Vec::new).extend(later);
    }
}

/// A configuration file and its `config.d/*.toml` drop-ins, parsed and merged (stages 1 and 2).
pub(crate) struct Merged<R> {
    /// The merged raw configuration; `None` when the main file did not parse.
    pub raw: Option<R>,
    /// The main file's folder: relative paths and `config.d` resolve against it.
    pub base_dir: PathBuf,
    /// The main file, then every drop-in that parsed, in the order applied.
    pub files: Vec<PathBuf>,
    /// The main file's index in the report.
    pub main_file: usize,
}

/// Reads `path` and every `*.toml` in the `config.d/` folder beside it, in file-name order,
/// merging each over the previous; problems go to `report`. `None` when `path` is unreadable.
pub(crate) fn read_merged<R>(report: &mut Report, path: &Path) -> Option<Merged<R>>
where
    R: for<'de> Deserialize<'de> + MergeLater,
{
    // Relative paths resolve against the config's folder, not the daemon's working directory.
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let main_file = report.read_file(path)?;
    let mut files = vec![path.to_path_buf()];
    let mut raw = report.parse::<R>(main_file);
    for drop_in in toml_files_in(report, &base_dir.join("config.d")) {
        let Some(file) = report.read_file(&drop_in) else {
            continue;
        };
        if let Some(later) = report.parse::<R>(file) {
            if let Some(raw) = raw.as_mut() {
                raw.merge(later);
            }
            files.push(drop_in);
        }
    }
    Some(Merged {
        raw,
        base_dir,
        files,
        main_file,
    })
}

/// Every `*.toml` file in `dir`, sorted by file name; none when `dir` does not exist.
///
/// Names starting with `.` are skipped (editor lock and swap files). An unreadable folder is
/// recorded as a problem rather than silently ignored: a drop-in that is not applied would be
/// a surprise.
pub(crate) fn toml_files_in(report: &mut Report, dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            report.problem_in(dir, format!("cannot list folder: {error}"));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let visible = path
                .file_name()
                .is_some_and(|name| !name.to_string_lossy().starts_with('.'));
            visible && path.extension().is_some_and(|ext| ext == "toml") && path.is_file()
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.len() > MAX_FOLDER_FILES {
        report.problem_in(
            dir,
            format!(
                "folder holds {} .toml files, more than the {MAX_FOLDER_FILES} read",
                files.len()
            ),
        );
        files.truncate(MAX_FOLDER_FILES);
    }
    files
}

/// Sets [`CURRENT_FILE`] for one deserialisation and restores the previous value afterwards.
struct CurrentFileGuard {
    /// The value to restore.
    previous: usize,
}

impl CurrentFileGuard {
    fn set(file: usize) -> Self {
        CurrentFileGuard {
            previous: CURRENT_FILE.with(|current| current.replace(file)),
        }
    }
}

impl Drop for CurrentFileGuard {
    fn drop(&mut self) {
        CURRENT_FILE.with(|current| current.set(self.previous));
    }
}

/// 1-based line and character column of a byte offset (clamped to the text).
pub(crate) fn position_of(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// One step of the key path an error happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyStep {
    /// A table key.
    Key(String),
    /// An index into an array.
    Index,
    /// A map key we do not know (the key itself was being deserialised as a located value).
    Unknown,
}

/// The key path of a serde error, without the internal steps `serde_spanned` adds.
fn key_path(path: &serde_path_to_error::Path) -> Vec<KeyStep> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } if key.starts_with("$__serde_spanned") => None,
            Segment::Map { key } | Segment::Enum { variant: key } => {
                Some(KeyStep::Key(key.clone()))
            }
            Segment::Seq { .. } => Some(KeyStep::Index),
            Segment::Unknown => Some(KeyStep::Unknown),
        })
        .collect()
}

/// How a table at `path` is written in a file: `[gateway]`, `[[device]]`, `[[campaign]] options`.
fn section_name(path: &[KeyStep]) -> String {
    let mut header = String::new();
    let mut rest: Vec<&str> = Vec::new();
    let mut steps = path.iter().peekable();
    if let Some(KeyStep::Key(first)) = steps.next() {
        if steps.peek() == Some(&&KeyStep::Index) {
            steps.next();
            header = format!("[[{first}]]");
        } else {
            header = first.clone();
            // Nested plain tables read as one dotted header: [escpos.patterns].
            while let Some(KeyStep::Key(next)) = steps.peek() {
                header = format!("{header}.{next}");
                steps.next();
            }
            header = format!("[{header}]");
        }
    }
    for step in steps {
        if let KeyStep::Key(key) = step {
            rest.push(key);
        }
    }
    if header.is_empty() {
        return "top level".to_string();
    }
    if rest.is_empty() {
        header
    } else {
        format!("{header} {}", rest.join("."))
    }
}

/// "in \[gateway\]" or "at top level".
fn where_in(path: &[KeyStep]) -> String {
    match section_name(path).as_str() {
        "top level" => "at top level".to_string(),
        section => format!("in {section}"),
    }
}

/// Rewrites a `toml`/serde error message into ours, using the key path it happened at.
fn describe_toml_error(path: &[KeyStep], message: &str) -> String {
    // Syntax errors have an empty path; toml's message may span lines ("invalid string\nexpected …").
    let message = message.trim().replace('\n', ", ");
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((unknown, expected)) = names.split_first() {
            // The path usually ends with the unknown key itself; not when the key was the first
            // of an implicit table (`gateway.stor = …`), which `Located` reads ahead untracked.
            let parent = match path.split_last() {
                Some((KeyStep::Key(last), parent)) if last == unknown => parent,
                _ => path,
            };
            let mut text = format!("unknown key '{unknown}' {}", where_in(parent));
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            if let Some(near) = suggest(unknown, expected.iter().copied()) {
                text.push_str(&format!(", did you mean '{near}'?"));
            } else if !expected.is_empty() {
                text.push_str(&format!(" (known keys: {})", expected.join(", ")));
            }
            return text;
        }
    }
    let type_error = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    if let Some((found, expected)) = type_error {
        let what = match path.split_last() {
            Some((KeyStep::Key(key), parent)) => format!("'{key}' {}", where_in(parent)),
            Some((_, parent)) => format!("a value {}", where_in(parent)),
            None => "the file".to_string(),
        };
        let expected = plain_type(expected);
        let mut text = format!("{what} must be {expected}, found {}", plain_type(found));
        // The classic slip: [device] where [[device]] is meant.
        if let [KeyStep::Key(key)] = path {
            if expected == "an array" && found == "map" {
                text.push_str(&format!(" (write [[{key}]] for each entry, not [{key}])"));
            }
        }
        return text;
    }
    if path.is_empty() {
        format!("toml syntax error: {message}")
    } else {
        format!("{}: {message}", section_name(path))
    }
}

/// The backtick-quoted words of a serde message, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Serde's names for types and values, in the words a config file's author uses.
fn plain_type(serde_name: &str) -> String {
    let serde_name = serde_name.trim();
    match serde_name {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer".into()
        }
        "a sequence" | "sequence" => "an array".into(),
        "a map" | "map" => "a table".into(),
        "a boolean" | "a string" => serde_name.into(),
        other if other.starts_with("struct ") => "a table".into(),
        other
            if other.starts_with("integer ")
                || other.starts_with("boolean ")
                || other.starts_with("floating point ") =>
        {
            other.replace('`', "")
        }
        other => other.into(),
    }
}

/// The candidate closest to `word`, when it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // 0.8 on Jaro-Winkler accepts typos and prefixes ("baudrate" -> "baud", "generic-scaner")
    // while rejecting unrelated words; the prefix bonus suits keys that get abbreviated.
    const THRESHOLD: f64 = 0.8;
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score >= THRESHOLD)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        gateway: Option<Located<Inner>>,
        device: Option<Vec<Located<Inner>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        baud: Option<Located<i64>>,
        name: Option<Located<String>>,
    }

    fn parse(text: &str) -> (Option<Top>, Vec<String>) {
        let mut report = Report::default();
        let file = report.add_file(PathBuf::from("t.toml"), text.to_string());
        let top = report.parse::<Top>(file);
        let lines = report
            .problems
            .iter()
            .map(|(_, diagnostic)| diagnostic.to_string())
            .collect();
        (top, lines)
    }

    #[test]
    fn located_values_remember_file_and_span() {
        let mut report = Report::default();
        report.add_file(PathBuf::from("zero.toml"), String::new());
        let text = "[gateway]\nbaud = 9600\n";
        let file = report.add_file(PathBuf::from("one.toml"), text.to_string());
        let top: Top = report.parse(file).expect("parses");
        let baud = top.gateway.expect("gateway").value.baud.expect("baud");
        assert_eq!(baud.value, 9600);
        assert_eq!(baud.span.file, 1);
        assert_eq!(report.describe(&baud.span), "one.toml:2:8");
    }

    #[test]
    fn implicit_tables_and_dotted_keys_load() {
        let (top, lines) = parse("gateway.baud = 1\n[[device]]\nname = \"a\"\n");
        assert_eq!(lines, Vec::<String>::new());
        let top = top.expect("parses");
        let gateway = top.gateway.expect("gateway");
        assert_eq!(gateway.span.range, 0..0, "implicit table: no span");
        let devices = top.device.expect("devices");
        assert_eq!(devices[0].value.name.as_ref().expect("name").value, "a");
        assert_eq!(gateway.value.baud.expect("baud").span.range, 15..16);
    }

    #[test]
    fn unknown_key_names_section_and_suggests() {
        let (_, lines) = parse("[[device]]\nname = \"a\"\n\n[[device]]\nbaudrate = 9600\n");
        assert_eq!(
            lines,
            ["t.toml:5:1: unknown key 'baudrate' in [[device]], did you mean 'baud'?"]
        );
    }

    #[test]
    fn unknown_first_key_of_implicit_table_names_the_table() {
        let (_, lines) = parse("gateway.bauds = 1\n");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].ends_with("unknown key 'bauds' in [gateway], did you mean 'baud'?"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn unknown_key_far_from_any_lists_known_keys() {
        let (_, lines) = parse("[gateway]\nzzz = 1\n");
        assert_eq!(
            lines,
            ["t.toml:2:1: unknown key 'zzz' in [gateway] (known keys: baud, name)"]
        );
    }

    #[test]
    fn type_error_names_key() {
        let (_, lines) = parse("[gateway]\nbaud = \"fast\"\n");
        assert_eq!(
            lines,
            ["t.toml:2:8: 'baud' in [gateway] must be an integer, found string \"fast\""]
        );
    }

    #[test]
    fn single_table_where_array_expected_hints_double_brackets() {
        let (_, lines) = parse("[device]\nbaud = 1\n");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("write [[device]]"), "{}", lines[0]);
    }

    #[test]
    fn syntax_error_has_position() {
        let (_, lines) = parse("[gateway]\nname = \"unterminated\n");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("t.toml:2:"), "{}", lines[0]);
        assert!(lines[0].contains("toml syntax error"), "{}", lines[0]);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(
            position_of("a = \"参松\"\nb", 11),
            Position { line: 1, column: 8 }
        );
        assert_eq!(position_of("x\ny", 2), Position { line: 2, column: 1 });
        assert_eq!(position_of("x", 99), Position { line: 1, column: 2 });
    }

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(suggest("baudrate", ["id", "baud", "path"]), Some("baud"));
        assert_eq!(
            suggest("generic-scaner", ["generic-scanner", "escpos-tap"]),
            Some("generic-scanner")
        );
        assert_eq!(suggest("zzz", ["id", "baud"]), None);
    }
}
