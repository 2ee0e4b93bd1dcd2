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

use tokio::sync::{mpsc, oneshot};

use super::journal::PromptJournal;
use super::model::AttributionData;

/// Most messages taken as one batch.
const BATCH: usize = 64;

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
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut state = None;
        for msg in batch.drain(..) {
            match msg {
                WriterMsg::Append { data, done } => {
                    let result = journal.append_attribution(&data).await;
                    if let Err(error) = &result {
                        tracing::error!(
                            prompt = %data.prompt,
                            outcome = data.outcome.as_str(),
                            %error,
                            "failed to append attribution record"
                        );
                    }
                    if let Some(done) = done {
                        // The caller may have gone away; the record is written regardless.
                        let _ = done.send(result);
                    }
                }
                WriterMsg::Save(bytes) => state = Some(bytes),
            }
        }
        if let Some(bytes) = state {
            if let Err(error) = journal.save_open_prompts(bytes).await {
                // The next change saves a full snapshot again.
                tracing::warn!(%error, "failed to save open prompts");
            }
        }
    }
}
