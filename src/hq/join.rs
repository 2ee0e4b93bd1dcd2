//! The traceability join (ingest side): which *tracked* sales HQ holds the first contact,
//! handler and conversation of, decided as records arrive, in any order, and kept in sled.
//!
//! A tracked sale links by up to three kinds of *link key*: `c` + the consultation it names,
//! `r` + its receipt, `p` + each prompt its lines name. *Evidence* is a record that shows the
//! customer's first contact, the handler and the conversation: a consultation with `opened_at`
//! and a step done (keys `c` + its id, `r` + its receipt), or an answered attribution with
//! `opened_at` and a clerk (keys `p` + its prompt, `r` + its receipt). The handler of a
//! consultation without a clerk is the sale's clerk, so such evidence traces only a sale that
//! names one. A sale is *traced* once evidence of the same store shares one of its link keys.
//!
//! Both sides are kept, so the order of arrival does not matter (a consultation record is
//! written when it closes, often after the sale; a store offline for a day sends everything
//! late):
//! - `E store 0 link` → the [`Evidence`] held for that key (the first, or a later one that
//!   names a clerk where the first did not);
//! - `W store 0 link 0 hq_seq` → nothing: the tracked sale at hq_seq waits for that key;
//! - `L hq_seq` → the sale's [`SaleSummary`], its `traced` set once evidence is found.
//!
//! A sale finds its evidence by one `get` per link key; evidence finds the sales waiting for
//! it by one prefix scan per key. When a waiting sale is traced its `W` keys go and its `L`
//! summary is rewritten. Everything is written into the batch's one atomic `sled::Batch` by
//! the writer thread (or the start-up re-summarising), and the records of the batch see each
//! other through the overlays here, since sled does not show a batch's writes before it is
//! applied.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;

use super::stats::{Evidence, EvidenceKind, SaleSummary, StepStatus, Summary};
use super::store;

/// The join state of one sled batch being built.
pub(crate) struct Join<'t> {
    /// The tree, as of the last applied batch.
    tree: &'t sled::Tree,
    /// Sales from this hq_seq on are of this batch (not yet counted in memory).
    first_seq: u64,
    /// `E` keys written in this batch.
    evidence: HashMap<Vec<u8>, Evidence>,
    /// `W` prefixes (`W store 0 link 0`) -> sales made to wait in this batch.
    waiting_added: HashMap<Vec<u8>, Vec<u64>>,
    /// Whole `W` keys removed in this batch.
    waiting_removed: HashSet<Vec<u8>>,
    /// `L` summaries written in this batch, as they stand now.
    sales: HashMap<u64, SaleSummary>,
    /// Sales of earlier batches that became traced: as they were counted, and as they are.
    retraced: Vec<(SaleSummary, SaleSummary)>,
}

impl<'t> Join<'t> {
    /// A join for a batch whose records start at `first_seq`.
    pub(crate) fn new(tree: &'t sled::Tree, first_seq: u64) -> Self {
        Join {
            tree,
            first_seq,
            evidence: HashMap::new(),
            waiting_added: HashMap::new(),
            waiting_removed: HashSet::new(),
            sales: HashMap::new(),
            retraced: Vec::new(),
        }
    }

    /// A tracked sale stored at `seq`: traced at once when evidence is held for one of its
    /// link keys, else it waits under each of them.
    pub(crate) fn sale(
        &mut self,
        seq: u64,
        mut summary: SaleSummary,
        batch: &mut sled::Batch,
    ) -> anyhow::Result<()> {
        let links = sale_links(&summary);
        for link in &links {
            if let Some(evidence) =
                self.held_evidence(&store::evidence_key(&summary.store, link))?
            {
                if traces(&evidence, &summary) {
                    summary.traced = Some(evidence);
                    break;
                }
            }
        }
        if summary.traced.is_none() {
            for link in &links {
                batch.insert(store::waiting_key(&summary.store, link, seq), &[]);
                self.waiting_added
                    .entry(store::waiting_prefix(&summary.store, link))
                    .or_default()
                    .push(seq);
            }
        }
        batch.insert(&store::sale_key(seq), serde_json::to_vec(&summary)?);
        self.sales.insert(seq, summary);
        Ok(())
    }

    /// An attribution or consultation record stored at `seq`: when it is evidence, it is
    /// kept under its link keys and traces the sales waiting for them.
    pub(crate) fn record(
        &mut self,
        seq: u64,
        summary: &Summary,
        batch: &mut sled::Batch,
    ) -> anyhow::Result<()> {
        let Some((store, evidence, links)) = evidence_of(seq, summary) else {
            return Ok(());
        };
        for link in &links {
            let key = store::evidence_key(store, link);
            let better = match self.held_evidence(&key)? {
                None => true,
                Some(held) => held.clerk.is_none() && evidence.clerk.is_some(),
            };
            if better {
                batch.insert(key.as_slice(), serde_json::to_vec(&evidence)?);
                self.evidence.insert(key, evidence.clone());
            }
            let prefix = store::waiting_prefix(store, link);
            let mut waiting = Vec::new();
            for item in self.tree.scan_prefix(&prefix) {
                let (key, _) = item?;
                if key.len() != prefix.len() + 8 || self.waiting_removed.contains(key.as_ref()) {
                    continue;
                }
                waiting.extend(be_u64(&key[prefix.len()..]));
            }
            waiting.extend(self.waiting_added.get(&prefix).into_iter().flatten());
            for sale_seq in waiting {
                self.trace(sale_seq, &evidence, batch)?;
            }
        }
        Ok(())
    }

    /// Traces the waiting sale at `seq` with `evidence`, if it does not have its own already
    /// and the evidence names a handler for it.
    fn trace(
        &mut self,
        seq: u64,
        evidence: &Evidence,
        batch: &mut sled::Batch,
    ) -> anyhow::Result<()> {
        let Some(before) = self.held_sale(seq)? else {
            return Ok(());
        };
        if before.traced.is_some() || !traces(evidence, &before) {
            return Ok(());
        }
        let mut after = before.clone();
        after.traced = Some(evidence.clone());
        for link in sale_links(&after) {
            let key = store::waiting_key(&after.store, &link, seq);
            batch.remove(key.as_slice());
            self.waiting_removed.insert(key);
            if let Some(seqs) = self
                .waiting_added
                .get_mut(&store::waiting_prefix(&after.store, &link))
            {
                seqs.retain(|waiting| *waiting != seq);
            }
        }
        batch.insert(&store::sale_key(seq), serde_json::to_vec(&after)?);
        if seq < self.first_seq {
            self.retraced.push((before, after.clone()));
        }
        self.sales.insert(seq, after);
        Ok(())
    }

    /// The summary of the sale at `seq` as it stands now (this batch's writes included).
    pub(crate) fn sale_now(&self, seq: u64) -> Option<&SaleSummary> {
        self.sales.get(&seq)
    }

    /// The sales of earlier batches this batch traced: (as counted, as they are now).
    pub(crate) fn take_retraced(&mut self) -> Vec<(SaleSummary, SaleSummary)> {
        std::mem::take(&mut self.retraced)
    }

    /// The evidence held under an `E` key, this batch's included.
    fn held_evidence(&self, key: &[u8]) -> anyhow::Result<Option<Evidence>> {
        if let Some(evidence) = self.evidence.get(key) {
            return Ok(Some(evidence.clone()));
        }
        match self.tree.get(key)? {
            None => Ok(None),
            Some(value) => Ok(Some(
                serde_json::from_slice(&value).context("damaged evidence entry")?,
            )),
        }
    }

    /// The summary of the tracked sale at `seq`, this batch's included.
    fn held_sale(&self, seq: u64) -> anyhow::Result<Option<SaleSummary>> {
        if let Some(sale) = self.sales.get(&seq) {
            return Ok(Some(sale.clone()));
        }
        match self.tree.get(store::sale_key(seq))? {
            None => Ok(None),
            Some(value) => Ok(Some(
                serde_json::from_slice(&value)
                    .with_context(|| format!("damaged sale summary {seq}"))?,
            )),
        }
    }
}

/// Whether `evidence` traces `sale`: it names a handler, or the sale does.
fn traces(evidence: &Evidence, sale: &SaleSummary) -> bool {
    evidence.clerk.is_some() || sale.clerk.is_some()
}

/// The link keys of a tracked sale.
fn sale_links(sale: &SaleSummary) -> Vec<Vec<u8>> {
    let mut links = Vec::with_capacity(2 + sale.prompts.len());
    links.extend(sale.consultation.as_deref().map(|id| link(b'c', id)));
    links.extend(sale.receipt.as_deref().map(|receipt| link(b'r', receipt)));
    links.extend(sale.prompts.iter().map(|prompt| link(b'p', prompt)));
    links
}

/// The store, evidence and link keys of a record that is evidence; `None` for any other.
fn evidence_of(seq: u64, summary: &Summary) -> Option<(&str, Evidence, Vec<Vec<u8>>)> {
    match summary {
        Summary::Consultation(consultation) => {
            let done = consultation
                .steps
                .iter()
                .any(|step| step.status == StepStatus::Done);
            if consultation.opened_at.is_none() || !done {
                return None;
            }
            let mut links = Vec::with_capacity(2);
            links.extend(consultation.id.as_deref().map(|id| link(b'c', id)));
            links.extend(consultation.receipt.as_deref().map(|r| link(b'r', r)));
            let evidence = Evidence {
                kind: EvidenceKind::Consultation,
                clerk: consultation.clerk.clone(),
                hq_seq: seq,
            };
            Some((consultation.store.as_str(), evidence, links))
        }
        Summary::Attribution(attribution) => {
            if attribution.outcome != "answered"
                || attribution.opened_at.is_none()
                || attribution.clerk.is_none()
            {
                return None;
            }
            let mut links = Vec::with_capacity(2);
            links.extend(attribution.prompt.as_deref().map(|p| link(b'p', p)));
            links.extend(attribution.receipt.as_deref().map(|r| link(b'r', r)));
            let evidence = Evidence {
                kind: EvidenceKind::Attribution,
                clerk: attribution.clerk.clone(),
                hq_seq: seq,
            };
            Some((attribution.store.as_str(), evidence, links))
        }
        Summary::Sale(_) => None,
    }
}

/// A link key: its tag byte, then the text.
fn link(tag: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(tag);
    key.extend_from_slice(text.as_bytes());
    key
}

/// A u64 from 8 big-endian bytes.
fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
