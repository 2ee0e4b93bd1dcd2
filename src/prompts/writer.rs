//! The writer task: the engine's only path to the journal.
//!
//! The engine never awaits the journal (an fsync must not hold up the next scan's prompt); it
//! queues writes here and carries on. The writer takes whatever is queued as a batch, appends
//! the batch's attribution records in order, then saves the batch's *last* state only: each
//! state is a full snapshot, so the earlier ones are superseded.
//!
//! Invariant: a saved state never lacks a prompt whose attribution record is not yet appended,
//! because the engine queues a resolution's record before the state without that prompt, and the
//! writer appends every record of a batch before saving its state. A crash can therefore
//! duplicate an attribution (record appended, prompt still in the saved state, resolved again as
//! timeout after restart; HQ sees two records with the same `prompt`) but never lose one.
//!
//! A record the journal refuses is kept and appended again before anything else (every
//! [`RETRY`] at least); until it is in, no state is saved, so the saved state keeps its prompt
//! and a restart still resolves it.

use tokio::sync::{mpsc, oneshot};

use super::journal::PromptJournal;
use crate::record::attribution::AttributionData;

/// Most messages taken as one batch.
const BATCH: usize = 64;

/// How often records the journal refused are tried again while nothing else arrives.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A write for the journal.
pub(crate) enum WriterMsg {
    /// Append an attribution record, then report the result on `done` (when someone waits).
    Append {
        /// The record (boxed: it is most of the message's size).
        data: Box<AttributionData>,
        /// Told once the record is in the journal, or why not.
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Replace the persisted open-prompt state.
    Save(Vec<u8>),
}

/// Runs until every sender is dropped and the queue is drained.
pub(crate) async fn run<J: PromptJournal>(
    journal: J,
    mut queue: mpsc::UnboundedReceiver<WriterMsg>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // Records the journal refused, oldest first; retried before anything else.
    let mut failed: Vec<Box<AttributionData>> = Vec::new();
    // The newest state not saved yet (held back while records are missing).
    let mut state = None;
    loop {
        let received = if failed.is_empty() {
            queue.recv_many(&mut batch, BATCH).await
        } else {
            match tokio::time::timeout(RETRY, queue.recv_many(&mut batch, BATCH)).await {
                Ok(received) => received,
                Err(_) => usize::MAX, // time to retry
            }
        };
        if received == 0 {
            return;
        }
        let mut still_failed = Vec::new();
        for data in failed.drain(..) {
            if journal.append_attribution(&data).await.is_err() {
                still_failed.push(data);
            } else {
                tracing::info!(prompt = %data.prompt, "attribution record written on retry");
            }
        }
        failed = still_failed;
        for msg in batch.drain(..) {
            match msg {
                WriterMsg::Append { data, done } => {
                    // Keep the order: behind an earlier failure, queue instead of writing.
                    let result = if failed.is_empty() {
                        journal.append_attribution(&data).await
                    } else {
                        Err("an earlier attribution record is still waiting for the journal".into())
                    };
                    if let Err(error) = &result {
                        tracing::error!(
                            prompt = %data.prompt,
                            outcome = data.outcome.as_str(),
                            %error,
                            "cannot append attribution record; kept and retried"
                        );
                        failed.push(data);
                    }
                    if let Some(done) = done {
                        // The caller may have gone away; the record is written regardless.
                        let _ = done.send(result);
                    }
                }
                WriterMsg::Save(bytes) => state = Some(bytes),
            }
        }
        if failed.is_empty() {
            if let Some(bytes) = state.take() {
                if let Err(error) = journal.save_open_prompts(bytes).await {
                    // The next change saves a full snapshot again.
                    tracing::warn!(%error, "failed to save open prompts");
                }
            }
        }
    }
}
