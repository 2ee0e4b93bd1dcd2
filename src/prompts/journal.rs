//! Where the engine's output goes: attribution records and its persisted open-prompt state.
//!
//! The gateway implements [`PromptJournal`] over the real journal; [`MemoryPromptJournal`] keeps
//! everything in memory for tests and experiments.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::record::attribution::AttributionData;

/// Persistence and record output of the prompt engine.
pub trait PromptJournal: Clone + Send + Sync + 'static {
    /// Appends one `attribution` record (`data` = the contract's attribution object); Ok once it
    /// is in the journal.
    fn append_attribution(
        &self,
        data: &AttributionData,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Durably replaces the persisted open-prompt state (an opaque, versioned blob).
    fn save_open_prompts(&self, state: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;

    /// The persisted open-prompt state, if any was ever saved.
    fn load_open_prompts(&self) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send;
}

/// An in-memory [`PromptJournal`]: records and state live as long as its clones.
#[derive(Clone, Default)]
pub struct MemoryPromptJournal {
    /// Shared with every clone; a std mutex is fine, nothing awaits while holding it.
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    /// Attribution records in append order.
    records: Vec<AttributionData>,
    /// The last saved state.
    state: Option<Vec<u8>>,
    /// How many times the state was saved.
    saves: u64,
    /// When set, every call fails with this message (to test journal outages).
    failure: Option<String>,
}

impl MemoryPromptJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// A journal holding a previously saved state, as after a restart.
    pub fn with_state(state: Vec<u8>) -> Self {
        let journal = Self::default();
        journal.lock().state = Some(state);
        journal
    }

    /// Every attribution record appended so far.
    pub fn records(&self) -> Vec<AttributionData> {
        self.lock().records.clone()
    }

    /// The last saved state.
    pub fn state(&self) -> Option<Vec<u8>> {
        self.lock().state.clone()
    }

    /// How many times the state was saved.
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    /// Makes every later call fail with `message` (`None` heals it).
    pub fn set_failure(&self, message: Option<&str>) {
        self.lock().failure = message.map(str::to_owned);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the data half-updated (each section is
        // one push or assignment), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PromptJournal for MemoryPromptJournal {
    async fn append_attribution(&self, data: &AttributionData) -> Result<(), String> {
        let mut inner = self.lock();
        if let Some(failure) = &inner.failure {
            return Err(failure.clone());
        }
        inner.records.push(data.clone());
        Ok(())
    }

    async fn save_open_prompts(&self, state: Vec<u8>) -> Result<(), String> {
        let mut inner = self.lock();
        if let Some(failure) = &inner.failure {
            return Err(failure.clone());
        }
        inner.state = Some(state);
        inner.saves += 1;
        Ok(())
    }

    async fn load_open_prompts(&self) -> Result<Option<Vec<u8>>, String> {
        let inner = self.lock();
        if let Some(failure) = &inner.failure {
            return Err(failure.clone());
        }
        Ok(inner.state.clone())
    }
}
