//! The gateway's [`PromptJournal`]: attribution records go into the real journal (the answer is
//! confirmed only once the record is durable), and the open-prompt state is one small file in
//! `data_dir`, replaced atomically (write a temporary file, fsync, rename, fsync the folder),
//! so a crash at any moment leaves either the old state or the new one.
//!
//! The state is written only once every record appended before it is durable. A prompt names
//! the scan that opened it, and a crash inside the journal's flush window takes that scan back
//! (its seq is then issued again to another record); were the state already on disk, the
//! resumed prompt would name someone else's record. Waiting costs at most one flush interval
//! of write-behind, never the clerk's time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::journal::PromptJournal;
use crate::journal::JournalHandle;
use crate::record::attribution::AttributionData;
use crate::record::Kind;

/// File name of the open-prompt state inside `data_dir`.
pub const STATE_FILE: &str = "prompts.state";

/// [`PromptJournal`] over the gateway's journal and data folder.
#[derive(Clone)]
pub struct JournalPrompts {
    journal: JournalHandle,
    state_path: Arc<PathBuf>,
}

impl JournalPrompts {
    /// Records into `journal`; keeps the state in `data_dir/prompts.state`.
    pub fn new(journal: JournalHandle, data_dir: &Path) -> Self {
        JournalPrompts {
            journal,
            state_path: Arc::new(data_dir.join(STATE_FILE)),
        }
    }
}

impl JournalPrompts {
    /// Waits until every record appended so far (the scans of the prompts in the state among
    /// them) is durable.
    async fn wait_appended_durable(&self) -> Result<(), crate::journal::JournalError> {
        let last = self.journal.stats().next_seq.saturating_sub(1);
        loop {
            let stats = self.journal.stats();
            if stats.durable_seq >= last {
                return Ok(());
            }
            self.journal
                .wait_durable_beyond(stats.durable_position)
                .await?;
        }
    }
}

impl PromptJournal for JournalPrompts {
    async fn append_attribution(&self, data: &AttributionData) -> Result<(), String> {
        let appended = self
            .journal
            .append_value(Kind::Attribution, data)
            .await
            .map_err(|e| e.to_string())?;
        appended.durable.wait().await.map_err(|e| e.to_string())
    }

    async fn save_open_prompts(&self, state: Vec<u8>) -> Result<(), String> {
        self.wait_appended_durable()
            .await
            .map_err(|e| format!("open prompts not saved: {e}"))?;
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || replace_file(&path, &state))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot save {}: {e}", self.state_path.display()))
    }

    async fn load_open_prompts(&self) -> Result<Option<Vec<u8>>, String> {
        match tokio::fs::read(&*self.state_path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!(
                "cannot read {}: {error}",
                self.state_path.display()
            )),
        }
    }
}

/// Atomically replaces `path` with `contents`, durably.
pub(crate) fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_state_is_saved_only_once_the_scans_before_it_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        // A flush interval longer than the test: records stay not durable until close.
        let journal = crate::journal::open_for_test(dir.path(), Duration::from_secs(3600)).await;
        let prompts = JournalPrompts::new(journal.clone(), dir.path());
        journal
            .append_value(Kind::Scan, &serde_json::json!({"code": "6901234567892"}))
            .await
            .expect("scan");
        let saving = tokio::spawn({
            let prompts = prompts.clone();
            async move { prompts.save_open_prompts(b"state".to_vec()).await }
        });
        // Not written while the scan it follows could still be lost.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!saving.is_finished(), "saved before the scan was durable");
        assert!(!dir.path().join(STATE_FILE).exists());
        journal.close().await.expect("close flushes");
        saving.await.unwrap().expect("saved once durable");
        assert_eq!(
            std::fs::read(dir.path().join(STATE_FILE)).unwrap(),
            b"state"
        );
    }

    #[test]
    fn replace_file_swaps_contents_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        replace_file(&path, b"one").unwrap();
        replace_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
    }
}
