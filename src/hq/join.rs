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
//! - `W store 0 link 0 hq_seq` → the [`SaleSummary`] of the tracked sale at hq_seq, waiting for
//!   evidence under that key (each of its link keys holds a copy, so evidence finds the sales
//!   it traces in one prefix scan, without a further read);
//! - `L hq_seq` → the [`SaleSummary`] of a traced sale, its `traced` set.
//!
//! Every tracked sale is under `L` or under `W`, never both: a sale waiting costs a key per
//! link key, a traced one a key.
//!
//! A sale finds its evidence by one `get` per link key; evidence finds the sales waiting for
//! it by one prefix scan per key. When a waiting sale is traced its `W` keys go and its `L`
//! summary is rewritten. Everything goes into the batch's one atomic `sled::Batch`, written by
//! the writer thread (or the start-up re-summarising); the records of the batch see each other
//! through the overlays here, since sled does not show a batch's writes before it is applied.
//! Only the batch's final state is written ([`Join::finish`]): sled's cost is per key, so a sale
//! traced by a later record of its own batch costs its `L` key alone, not `W` keys written and
//! removed again.

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
    /// Sales traced in this batch, to write under `L`.
    sales: HashMap<u64, SaleSummary>,
    /// This batch's sales waiting for evidence (under `W`).
    waiting: HashMap<u64, SaleSummary>,
    /// Sales of earlier batches that became traced: as they were counted, and as they are.
    retraced: Vec<(SaleSummary, SaleSummary)>,
    /// `E` and `W` keys to write (`None`: to remove) when the batch is finished.
    writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
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
            waiting: HashMap::new(),
            retraced: Vec::new(),
            writes: HashMap::new(),
        }
    }

    /// Adds the batch's final state to `batch` (the `L` summaries of the sales it traced, `E`
    /// and `W` keys) and answers the sales of earlier batches it traced: (as counted, as now).
    pub(crate) fn finish(
        &mut self,
        batch: &mut sled::Batch,
    ) -> anyhow::Result<Vec<(SaleSummary, SaleSummary)>> {
        for (key, value) in self.writes.drain() {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        for (seq, sale) in &self.sales {
            batch.insert(&store::sale_key(*seq), serde_json::to_vec(sale)?);
        }
        Ok(std::mem::take(&mut self.retraced))
    }

    /// A tracked sale stored at `seq`: traced at once when evidence is held for one of its
    /// link keys, else it waits under each of them.
    pub(crate) fn sale(&mut self, seq: u64, mut summary: SaleSummary) -> anyhow::Result<()> {
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
        if summary.traced.is_some() {
            self.sales.insert(seq, summary);
            return Ok(());
        }
        let json = serde_json::to_vec(&summary)?;
        for link in &links {
            self.writes.insert(
                store::waiting_key(&summary.store, link, seq),
                Some(json.clone()),
            );
            self.waiting_added
                .entry(store::waiting_prefix(&summary.store, link))
                .or_default()
                .push(seq);
        }
        self.waiting.insert(seq, summary);
        Ok(())
    }

    /// An attribution or consultation record stored at `seq`: when it is evidence, it is
    /// kept under its link keys and traces the sales waiting for them.
    pub(crate) fn record(&mut self, seq: u64, summary: &Summary) -> anyhow::Result<()> {
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
                self.writes
                    .insert(key.clone(), Some(serde_json::to_vec(&evidence)?));
                self.evidence.insert(key, evidence.clone());
            }
            let prefix = store::waiting_prefix(store, link);
            let mut waiting: Vec<(u64, SaleSummary)> = Vec::new();
            for item in self.tree.scan_prefix(&prefix) {
                let (key, value) = item?;
                if key.len() != prefix.len() + 8 || self.waiting_removed.contains(key.as_ref()) {
                    continue;
                }
                let Some(sale_seq) = be_u64(&key[prefix.len()..]) else {
                    continue;
                };
                let sale = serde_json::from_slice(&value)
                    .with_context(|| format!("damaged waiting sale {sale_seq}"))?;
                waiting.push((sale_seq, sale));
            }
            for sale_seq in self.waiting_added.get(&prefix).into_iter().flatten() {
                waiting.extend(
                    self.waiting
                        .get(sale_seq)
                        .map(|sale| (*sale_seq, sale.clone())),
                );
            }
            for (sale_seq, sale) in waiting {
                self.trace(sale_seq, sale, &evidence);
            }
        }
        Ok(())
    }

    /// Traces the waiting sale at `seq` (`before`) with `evidence`, if the evidence names a
    /// handler for it.
    fn trace(&mut self, seq: u64, before: SaleSummary, evidence: &Evidence) {
        if before.traced.is_some() || !traces(evidence, &before) {
            return;
        }
        let mut after = before.clone();
        after.traced = Some(evidence.clone());
        for link in sale_links(&after) {
            let key = store::waiting_key(&after.store, &link, seq);
            // Written in this batch: never written at all; else removed.
            if seq < self.first_seq {
                self.writes.insert(key.clone(), None);
            } else {
                self.writes.remove(&key);
            }
            self.waiting_removed.insert(key);
            if let Some(seqs) = self
                .waiting_added
                .get_mut(&store::waiting_prefix(&after.store, &link))
            {
                seqs.retain(|waiting| *waiting != seq);
            }
        }
        self.waiting.remove(&seq);
        if seq < self.first_seq {
            self.retraced.push((before, after.clone()));
        }
        self.sales.insert(seq, after);
    }

    /// The summary of this batch's sale at `seq` as it stands now.
    pub(crate) fn sale_now(&self, seq: u64) -> Option<&SaleSummary> {
        self.sales.get(&seq).or_else(|| self.waiting.get(&seq))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::hq::daily::{Case, Day, DayFigures};
    use crate::hq::metrics::HqMetrics;
    use crate::hq::record::parse_batch;
    use crate::hq::storage::StoreHandle;

    const TS: &str = "2026-11-27T16:01:02.345+08:00";

    fn record(seq: u64, kind: &str, data: &str) -> String {
        format!(
            r#"{{"id":"S1/gw-1/ep1/{seq}","store":"S1","gateway":"gw-1","epoch":"ep1","seq":{seq},"ts":"{TS}","kind":"{kind}","data":{data}}}"#
        )
    }

    /// A sale: `receipt`, `clerk` (JSON), one line linked to `prompt` (JSON) of a campaign
    /// product, and `consultation` (JSON).
    fn sale(seq: u64, receipt: &str, clerk: &str, prompt: &str, consultation: &str) -> String {
        record(
            seq,
            "sale",
            &format!(
                r#"{{"device":"r","station":"till-1","receipt":"{receipt}","clerk":{clerk},"lines":[{{"sku":"6901234567892","name":null,"qty":1,"unit_price":null,"amount":1,"prompt":{prompt},"campaign":"c1"}}],"total":1,"currency":null,"text":null,"consultation":{consultation}}}"#
            ),
        )
    }

    fn attribution(seq: u64, prompt: &str, outcome: &str, clerk: &str) -> String {
        record(
            seq,
            "attribution",
            &format!(
                r#"{{"prompt":"{prompt}","campaign":"c1","station":"till-1","outcome":"{outcome}","clerk":{clerk},"opened_at":"{TS}","receipt":null}}"#
            ),
        )
    }

    /// A consultation `id` with one step done (or none), its clerk and receipt (JSON).
    fn consultation(seq: u64, id: &str, clerk: &str, receipt: &str, done: bool) -> String {
        let at = if done {
            format!("\"{TS}\"")
        } else {
            "null".into()
        };
        record(
            seq,
            "consultation",
            &format!(
                r#"{{"id":"{id}","flow":"f1","outcome":"completed","clerk":{clerk},"customer":"ref-7","opened_at":"{TS}","receipt":{receipt},"steps":[{{"key":"consult","label":"客户问诊","at":{at},"value":null,"values":null,"skipped":null}},{{"key":"symptoms","label":"症状记录","at":{at},"value":null,"values":["高血压"],"skipped":null}}]}}"#
            ),
        )
    }

    async fn post(handle: &StoreHandle, lines: &[String]) {
        let batch = parse_batch(lines.join("\n").into_bytes(), "S1").expect("valid");
        handle.ingest(batch).await.expect("stored");
    }

    fn figures(handle: &StoreHandle) -> BTreeMap<Day, DayFigures> {
        handle.daily(|daily| daily.store("S1").cloned().unwrap_or_default())
    }

    fn day() -> Day {
        Day::parse_from_str("2026-11-27", "%Y-%m-%d").expect("day")
    }

    /// (tracked, traced) of S1 on the day, and per clerk.
    fn traced(handle: &StoreHandle) -> ((u64, u64), BTreeMap<String, (u64, u64)>) {
        let figures = figures(handle).remove(&day()).unwrap_or_default();
        let clerks = figures
            .clerks
            .iter()
            .filter(|(_, clerk)| clerk.sales_tracked > 0)
            .map(|(name, clerk)| (name.clone(), (clerk.sales_tracked, clerk.sales_traced)))
            .collect();
        ((figures.sales_tracked, figures.sales_traced), clerks)
    }

    async fn reopen(dir: &std::path::Path) -> StoreHandle {
        loop {
            match StoreHandle::open(dir, chrono_tz::Asia::Shanghai, HqMetrics::new()).await {
                Ok(handle) => return handle,
                // sled lets go of its lock a moment after the last handle is dropped.
                Err(error) if error.to_string().contains("in use by another process") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(error) => panic!("open: {error:#}"),
            }
        }
    }

    #[tokio::test]
    async fn sales_are_traced_whatever_order_their_evidence_comes_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = reopen(dir.path()).await;
        // 1: sales before their evidence; a plain sale is not tracked at all.
        post(
            &handle,
            &[
                sale(1, "R-1", r#""c-1""#, r#""p-1""#, "null"),
                sale(2, "R-2", r#""c-1""#, r#""p-2""#, "null"),
                sale(3, "R-3", "null", "null", r#""k-3""#),
                record(
                    4,
                    "sale",
                    r#"{"receipt":"R-4","clerk":"c-1","lines":[{"sku":"1","prompt":null}]}"#,
                ),
            ],
        )
        .await;
        assert_eq!(
            traced(&handle),
            ((3, 0), BTreeMap::from([("c-1".into(), (2, 0))]))
        );
        // 2: p-1 answered (traces sale 1); p-2 timed out (no evidence); consultation k-3
        // without a clerk, for a sale without one: no handler, not traced.
        post(
            &handle,
            &[
                attribution(5, "p-1", "answered", r#""c-1""#),
                attribution(6, "p-2", "timeout", "null"),
                consultation(7, "k-3", "null", "null", true),
            ],
        )
        .await;
        assert_eq!(
            traced(&handle),
            ((3, 1), BTreeMap::from([("c-1".into(), (2, 1))]))
        );
        // 3: evidence before the sale, by consultation id (with no clerk: the sale's clerk is
        // the handler) and by receipt; and within one batch, evidence after its sale (k-3
        // named again, now with a clerk: the waiting sale 3 counts for that clerk).
        post(
            &handle,
            &[
                consultation(8, "k-8", "null", r#""R-9""#, true),
                sale(9, "R-9a", r#""c-2""#, "null", r#""k-8""#),
                sale(10, "R-9", r#""c-2""#, "null", "null"),
                sale(11, "R-11", r#""c-2""#, r#""p-11""#, "null"),
                attribution(12, "p-11", "answered", r#""c-2""#),
                consultation(13, "k-3", r#""c-3""#, "null", true),
                // A consultation with no step done is no evidence.
                consultation(14, "k-14", r#""c-2""#, "null", false),
                sale(15, "R-15", r#""c-2""#, "null", r#""k-14""#),
            ],
        )
        .await;
        let expected = (
            (7, 5),
            BTreeMap::from([
                ("c-1".to_string(), (2, 1)),
                ("c-2".to_string(), (4, 3)),
                ("c-3".to_string(), (1, 1)),
            ]),
        );
        assert_eq!(traced(&handle), expected);
        let before = figures(&handle);
        handle.close().await;

        // A restart rebuilds the same figures from the summaries, and a sale still waiting
        // (15) is traced by evidence that comes after it.
        let handle = reopen(dir.path()).await;
        assert_eq!(figures(&handle), before);
        post(
            &handle,
            &[consultation(16, "k-14", r#""c-2""#, "null", true)],
        )
        .await;
        assert_eq!(traced(&handle).0, (7, 6));
        handle.close().await;
    }

    #[tokio::test]
    async fn cases_come_by_day_in_ts_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = reopen(dir.path()).await;
        let late = consultation(1, "k-1", r#""c-1""#, "null", true).replace(
            &format!(r#""ts":"{TS}""#),
            r#""ts":"2026-11-27T23:59:00.000+08:00""#,
        );
        let next_day = attribution(2, "p-2", "answered", r#""c-1""#).replace(
            &format!(r#""ts":"{TS}""#),
            r#""ts":"2026-11-27T16:00:00.000Z""#,
        );
        post(
            &handle,
            &[late, next_day, attribution(3, "p-3", "timeout", "null")],
        )
        .await;
        let cases = handle.cases("S1", day(), day()).await.expect("cases");
        assert_eq!(cases.len(), 2, "the UTC record is on the 28th in Shanghai");
        let Case::Prompt {
            hq_seq,
            ts,
            outcome,
            clerk,
            ..
        } = &cases[0]
        else {
            panic!("a prompt first: {cases:?}");
        };
        assert_eq!((*hq_seq, ts.as_str(), outcome.as_str()), (3, TS, "timeout"));
        assert_eq!(clerk, &None);
        let Case::Consultation {
            hq_seq,
            ts,
            customer,
            steps,
            opened_at,
            ..
        } = &cases[1]
        else {
            panic!("then the consultation: {cases:?}");
        };
        assert_eq!(*hq_seq, 1);
        assert_eq!(ts, "2026-11-27T23:59:00.000+08:00");
        assert_eq!(customer.as_deref(), Some("ref-7"));
        assert_eq!(opened_at.as_deref(), Some(TS));
        assert!(steps[0].done);
        assert_eq!(steps[1].values, ["高血压"]);
        let next = day().succ_opt().expect("next day");
        let cases = handle.cases("S1", next, next).await.expect("cases");
        assert!(
            matches!(&cases[..], [Case::Prompt { hq_seq: 2, .. }]),
            "{cases:?}"
        );
        assert!(handle
            .cases("S2", day(), next)
            .await
            .expect("cases")
            .is_empty());
        handle.close().await;
    }
}
