//! The floor file, `data_dir/journal.floor`: the journal's epoch and the highest seq and position
//! known to be durable, kept outside sled.
//!
//! Why: after some kinds of damage sled 0.34 opens a database without any error but recovers only
//! a prefix of its log. The journal would then derive a lower next seq from what is left and
//! issue ids again that HQ already holds (HQ drops them as duplicates: data loss). sled cannot be
//! asked whether it lost something, so the journal keeps its own witness: after a successful
//! flush it writes here what that flush made durable (at most once a second while running, and
//! always on close and after salvage's flushes), and at open a journal of the same epoch that
//! ends below the floor has lost durable records and is treated as damaged (quarantine, new
//! epoch, salvage).
//!
//! The file is written atomically (temporary file, fsync, rename, fsync of the folder), so it is
//! either the old or the new floor, never a mix. It can lag the journal (that only narrows what
//! it detects), never lead it: it is written only after the flush that covers its figures.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the floor file inside `data_dir`.
pub(crate) const FLOOR_FILE: &str = "journal.floor";
/// Name of the temporary file a new floor is written to before the rename.
const FLOOR_TMP: &str = "journal.floor.tmp";
/// First word of the file, so a stray file is not mistaken for a floor.
const MAGIC: &str = "posgw-journal-floor-1";

/// What a journal had made durable when the floor was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Floor {
    /// The journal's epoch.
    pub(crate) epoch: String,
    /// The highest seq of that epoch known to be durable (0 = none).
    pub(crate) seq: u64,
    /// The highest position known to be durable (0 = none).
    pub(crate) position: u64,
}

impl Floor {
    /// The file's text: one line, `posgw-journal-floor-1 EPOCH SEQ POSITION`.
    fn encode(&self) -> String {
        format!("{MAGIC} {} {} {}\n", self.epoch, self.seq, self.position)
    }

    /// Parses the file's text; `None` if it is not a floor.
    fn parse(text: &str) -> Option<Floor> {
        let mut words = text.split_whitespace();
        if words.next()? != MAGIC {
            return None;
        }
        let epoch = words.next()?.to_string();
        let seq = words.next()?.parse().ok()?;
        let position = words.next()?.parse().ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Floor {
            epoch,
            seq,
            position,
        })
    }

    /// Why a journal of this floor's epoch whose last issued seq and position are these has
    /// lost durable records; `None` if it has not (or the journal is of another epoch).
    pub(crate) fn check(&self, epoch: &str, last_seq: u64, last_position: u64) -> Option<String> {
        if epoch != self.epoch || (last_seq >= self.seq && last_position >= self.position) {
            return None;
        }
        Some(format!(
            "the journal ends at seq {last_seq} (position {last_position}) but seq {} \
             (position {}) of epoch {epoch} was already durable ({FLOOR_FILE}): records were lost",
            self.seq, self.position
        ))
    }
}

/// The floor file's path in `data_dir`.
pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FLOOR_FILE)
}

/// Reads the floor in `data_dir`: `Ok(None)` if there is none, `Err` (naming the file) if it
/// cannot be read or is not a floor.
pub(crate) fn read(data_dir: &Path) -> Result<Option<Floor>, String> {
    let path = path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Floor::parse(&text)
            .map(Some)
            .ok_or_else(|| format!("{} is not a journal floor", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read {}: {err}", path.display())),
    }
}

/// Writes `floor` to `data_dir` atomically and durably (blocking: two fsyncs).
pub(crate) fn write(data_dir: &Path, floor: &Floor) -> Result<(), String> {
    let tmp = data_dir.join(FLOOR_TMP);
    let target = path(data_dir);
    let mut file = std::fs::File::create(&tmp)
        .map_err(|err| format!("cannot create {}: {err}", tmp.display()))?;
    file.write_all(floor.encode().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot write {}: {err}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(|err| {
        format!(
            "cannot rename {} to {}: {err}",
            tmp.display(),
            target.display()
        )
    })?;
    // The rename is durable only once the folder is.
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| format!("cannot fsync {}: {err}", data_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), Ok(None));
        let floor = Floor {
            epoch: "7f3a9c21".to_string(),
            seq: 42,
            position: 45,
        };
        write(dir.path(), &floor).expect("write");
        assert_eq!(read(dir.path()), Ok(Some(floor)));
        std::fs::write(path(dir.path()), "hello 1 2 3\n").expect("write junk");
        assert!(read(dir.path()).is_err());
    }

    #[test]
    fn check_flags_only_a_journal_of_the_same_epoch_that_ends_below() {
        let floor = Floor {
            epoch: "7f3a9c21".to_string(),
            seq: 10,
            position: 12,
        };
        assert_eq!(floor.check("7f3a9c21", 10, 12), None);
        assert_eq!(floor.check("7f3a9c21", 11, 13), None);
        assert_eq!(floor.check("00000000", 1, 1), None);
        let lost = floor.check("7f3a9c21", 9, 12).expect("seq below");
        assert!(lost.contains("records were lost"), "{lost}");
        assert!(floor.check("7f3a9c21", 10, 11).is_some());
    }
}
