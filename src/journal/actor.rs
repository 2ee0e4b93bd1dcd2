//! The journal actor: one tokio task owns the open [`Store`] and answers the commands of every
//! [`JournalHandle`], a turn at a time. It also runs group commit: it starts at most one flush
//! (the record log's fsync, and sled's when a removal needs it) at a time on a blocking thread,
//! at most `flush` after the oldest unflushed write, holds producers back while a due flush
//! cannot start, and publishes the durable position on a `watch` channel that [`Durable`]
//! futures wait on. After each append it asks the quota (`quota`) whether to evict.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::error::JournalError;
use super::handle::{
    Appended, AppendedBatch, Command, Durable, DurableMark, JournalConfig, JournalHandle,
    SharedStats,
};
use super::messages::MessageId;
use super::quota::{Enforced, Quota};
use super::store::Store;
use crate::record::{Data, Kind};

/// Commands waiting for the actor; appends beyond this wait (backpressure on producers).
const COMMAND_QUEUE: usize = 1024;
/// Records (or other commands) handled per wake-up before the actor looks at its timer and
/// flush again; a batch counts as its records, so a turn stays a few milliseconds at most.
const RECORDS_PER_TURN: usize = 256;
/// Least time between two updates of the floor file while running (each costs two fsyncs); the
/// final flush on close always updates it.
const FLOOR_EVERY: Duration = Duration::from_secs(1);
/// How long a removal (upload acknowledged) waits for sled's fsync; the fsyncs of appends in
/// between leave sled out. Nothing waits on a removal being durable (one lost in a crash only
/// makes the uplink send again records HQ already has, at most this much of them), and sled
/// fsyncs back to back while the uplink drains a backlog keep sled's freed pages from being
/// reclaimed: draining 1M records (flush = 50ms) peaked at 215 MiB RSS with removals fsynced
/// like appends, 108 MiB with this. (Dead-lettering and evictions fsync sled themselves.)
const REMOVAL_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Least time the oldest record not covered by a flush waits before the actor stops taking
/// commands while a flush runs (see [`Actor::held_back_until`]).
const HOLD_BACK_FLOOR: Duration = Duration::from_millis(1);
/// How long after a failed write of the record log (a full disk) the next flush tries again.
const WRITE_RETRY: Duration = Duration::from_millis(500);

/// Starts the actor for an open store.
pub(crate) fn spawn(store: Store, config: &JournalConfig) -> JournalHandle {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    // Everything before the first position of this session is already on disk (it was read
    // back from it), so the mark starts just below the next position.
    let initial = DurableMark {
        position: store.next_position - 1,
        failed: None,
    };
    let (mark_tx, mark) = watch::channel(initial);
    let stats = Arc::new(SharedStats::default());
    let epoch: Arc<str> = store.epoch.as_str().into();
    let messages = store.messages.clone();
    let id_prefix: Arc<str> = store.id_prefix().into();
    let actor = Actor {
        id_prefix,
        answers: Vec::new(),
        durable_seq: store.next_seq - 1,
        store,
        inbox,
        stats: stats.clone(),
        mark: mark_tx,
        flush_every: config.flush,
        quota: Quota::new(config),
        unflushed_since: None,
        flush_now: false,
        removed_since: None,
        in_flight: None,
        floor_written: None,
        failed: None,
        write_retry_at: None,
    };
    actor.publish_stats();
    tokio::spawn(actor.run());
    JournalHandle {
        commands,
        stats,
        mark,
        epoch,
        messages,
    }
}

/// The flush running on a blocking thread, and what it covers.
struct InFlight {
    /// The blocking task.
    task: JoinHandle<Result<(), JournalError>>,
    /// The highest position it covers.
    position: u64,
    /// The highest seq it covers.
    seq: u64,
}

/// A single append's reply channel and its answer.
type AppendAnswer = (
    oneshot::Sender<Result<Appended, JournalError>>,
    Result<Appended, JournalError>,
);

/// The task that owns the store.
struct Actor {
    /// `STORE/GW/EPOCH/`, shared with every [`AppendedBatch`].
    id_prefix: Arc<str>,
    /// Answers to this turn's single appends, sent together at the end of the turn (see the
    /// `yield_now` in [`Actor::run`]).
    answers: Vec<AppendAnswer>,
    /// The journal.
    store: Store,
    /// Commands from handles.
    inbox: mpsc::Receiver<Command>,
    /// Figures for handles.
    stats: Arc<SharedStats>,
    /// The durable mark.
    mark: watch::Sender<DurableMark>,
    /// See [`JournalConfig::flush`].
    flush_every: Duration,
    /// When to evict, and what was evicted that is not written down yet.
    quota: Quota,
    /// When the oldest append not covered by a started flush happened.
    unflushed_since: Option<Instant>,
    /// An urgent append is not covered by a started flush: the next flush is due at once.
    flush_now: bool,
    /// When the oldest removal not covered by a started flush happened.
    removed_since: Option<Instant>,
    /// The running flush, if any (never more than one).
    in_flight: Option<InFlight>,
    /// When a flush last started that updates the floor file (see `floor`).
    floor_written: Option<Instant>,
    /// The highest durable seq.
    durable_seq: u64,
    /// Set when a flush failed: the journal then refuses new records.
    failed: Option<Arc<str>>,
    /// Set while the record log cannot be written (a full disk): the next flush is not tried
    /// before then.
    write_retry_at: Option<Instant>,
}

impl Actor {
    /// The actor's main loop, then its shutdown.
    async fn run(mut self) {
        // One timer, re-armed as needed, rather than a new one per turn.
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut closing: Option<oneshot::Sender<Result<(), JournalError>>> = None;
        'main: loop {
            let deadline = self.flush_deadline();
            if self.in_flight.is_none() {
                if let Some(deadline) = deadline {
                    if deadline <= Instant::now() {
                        // A failure is recorded (and retried, or the journal failed for good).
                        let _ = self.start_flush(false);
                        continue;
                    }
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
            }
            let timer_armed = self.in_flight.is_none() && deadline.is_some();
            let hold_back = self.held_back_until();
            let held_back = hold_back.is_some_and(|at| at <= Instant::now());
            tokio::select! {
                biased;
                done = wait_in_flight(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.finish_flush(done);
                }
                () = timer.as_mut(), if timer_armed => {}
                () = sleep_until_or_never(hold_back), if hold_back.is_some() && !held_back => {}
                command = self.inbox.recv(), if !held_back => {
                    let Some(first) = command else { break 'main };
                    // Drain what is already queued (bounded, so flushes and timers still get a
                    // turn); every command taken off the queue is handled before leaving.
                    let mut next = Some(first);
                    let mut handled = 0;
                    while let Some(command) = next.take() {
                        if let Command::Close { reply } = command {
                            closing = Some(reply);
                            self.send_answers();
                            break 'main;
                        }
                        handled += self.handle(command);
                        if handled < RECORDS_PER_TURN {
                            next = self.inbox.try_recv().ok();
                        }
                    }
                    let answered = !self.answers.is_empty();
                    self.send_answers();
                    self.publish_stats();
                    if answered {
                        // Let the producers just answered (queued on this worker) run and send
                        // their next record before the actor looks at its queue again: the next
                        // turn then finds several appends waiting instead of parking the thread
                        // for each one. Measured: about 15-20% more single appends per second.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        let result = self.shutdown().await;
        if let Some(reply) = closing {
            let _ = reply.send(result);
        }
    }

    /// Handles one command (never blocks on fsync); returns how much of a turn's budget it
    /// used (its records, at least 1).
    fn handle(&mut self, command: Command) -> usize {
        match command {
            Command::Append {
                kind,
                data,
                origin,
                urgent,
                reply,
            } => {
                let result = self.append(kind, &data, origin);
                self.flush_now |= urgent && result.is_ok();
                self.answers.push((reply, result));
            }
            Command::AppendBatch {
                kind,
                data,
                origins,
                reply,
            } => {
                let result = self.append_batch(kind, &data, &origins);
                let _ = reply.send(result);
                return data.len().max(1);
            }
            Command::Read {
                after_position,
                max_records,
                max_bytes,
                reply,
            } => {
                let until = self.mark.borrow().position;
                let _ = reply.send(
                    self.store
                        .read(after_position, until, max_records, max_bytes),
                );
            }
            Command::RemoveThrough { position, reply } => {
                let result = if position > self.mark.borrow().position {
                    Err(JournalError::Rejected(format!(
                        "cannot remove through position {position}: it is not durable yet"
                    )))
                } else {
                    self.store.remove_through(position)
                };
                if matches!(result, Ok(removed) if removed > 0) {
                    self.note_removal();
                }
                let _ = reply.send(result);
            }
            Command::MoveToDead {
                position,
                reason,
                reply,
            } => {
                let result = self.store.move_to_dead(position, &reason);
                if result.is_ok() {
                    self.note_removal();
                }
                let _ = reply.send(result);
            }
            // Handled by the loop.
            Command::Close { reply } => {
                let _ = reply.send(Err(JournalError::Closed));
            }
        }
        1
    }

    /// Appends one record.
    fn append(
        &mut self,
        kind: Kind,
        data: &Data,
        origin: Option<MessageId>,
    ) -> Result<Appended, JournalError> {
        let local = self.accept(|store| store.append_from(kind, data, origin))?;
        self.note_write();
        self.stats.appended_total.fetch_add(1, Ordering::Relaxed);
        self.stats.per_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.enforce_quota();
        Ok(Appended {
            seq: local.seq,
            id: local.id,
            position: local.position,
            durable: Durable {
                position: local.position,
                mark: self.mark.subscribe(),
            },
        })
    }

    /// Runs `append` on the store unless the journal failed (then nothing is accepted any
    /// more); a refused append goes through [`Actor::append_failed`].
    fn accept<T>(
        &mut self,
        append: impl FnOnce(&mut Store) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        if let Some(failed) = &self.failed {
            return Err(JournalError::Flush(failed.to_string()));
        }
        append(&mut self.store).map_err(|err| self.append_failed(err))
    }

    /// A refused append: if it could not be taken back out of the log, the journal fails from
    /// now on (records reported failed could otherwise survive).
    fn append_failed(&mut self, err: JournalError) -> JournalError {
        if let Some(broken) = self.store.broken.take() {
            self.fail(broken);
        }
        err
    }

    /// Sends the answers collected this turn.
    fn send_answers(&mut self) {
        for (reply, result) in self.answers.drain(..) {
            let _ = reply.send(result);
        }
    }

    /// Appends a batch of records, all or nothing.
    fn append_batch(
        &mut self,
        kind: Kind,
        data: &[Data],
        origins: &[Option<MessageId>],
    ) -> Result<AppendedBatch, JournalError> {
        let local = self.accept(|store| store.append_batch(kind, data, origins))?;
        let last_position = if local.count == 0 {
            // Nothing to wait for: position 0 is always covered.
            0
        } else {
            self.note_write();
            local.first_position + local.count - 1
        };
        self.stats
            .appended_total
            .fetch_add(local.count, Ordering::Relaxed);
        self.stats.per_kind[kind.index()].fetch_add(local.count, Ordering::Relaxed);
        self.enforce_quota();
        Ok(AppendedBatch {
            first_seq: local.first_seq,
            first_position: local.first_position,
            count: local.count,
            durable: Durable {
                position: last_position,
                mark: self.mark.subscribe(),
            },
            id_prefix: self.id_prefix.clone(),
        })
    }

    /// Asks the quota whether to evict after an append, and counts what it did.
    fn enforce_quota(&mut self) {
        let enforced = self.quota.after_append(&mut self.store);
        self.count_quota(enforced);
    }

    /// Counts what the quota did: evictions are removals for the next flush, an `evicted`
    /// record an append.
    fn count_quota(&mut self, enforced: Enforced) {
        if enforced.evicted > 0 {
            self.note_removal();
            self.stats
                .evicted_records
                .fetch_add(enforced.evicted, Ordering::Relaxed);
        }
        if enforced.recorded {
            self.note_write();
            self.stats.appended_total.fetch_add(1, Ordering::Relaxed);
            self.stats.per_kind[Kind::Gateway.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the next flush is due: `flush` after the oldest unflushed append (at once after an
    /// urgent one), or
    /// `REMOVAL_FLUSH_EVERY` after the oldest unflushed removal, whichever comes first.
    fn flush_deadline(&self) -> Option<Instant> {
        let appends = self.unflushed_since.map(|since| {
            if self.flush_now {
                since
            } else {
                since + self.flush_every
            }
        });
        let removals = self.removed_since.map(|since| since + REMOVAL_FLUSH_EVERY);
        let due = match (appends, removals) {
            (Some(appends), Some(removals)) => Some(appends.min(removals)),
            (appends, removals) => appends.or(removals),
        };
        match self.write_retry_at {
            Some(retry_at) => due.map(|due| due.max(retry_at)),
            None => due,
        }
    }

    /// From when the actor takes no more commands until the running flush is done: once the
    /// oldest write waiting for the next flush is `flush` old (at least [`HOLD_BACK_FLOOR`]).
    /// Without it, a burst (an MQTT backlog after a restart) keeps being accepted however long
    /// the running fsync takes, and thousands of records wait for a flush that cannot start
    /// yet; held back, producers wait instead (an MQTT message is then not read from the
    /// broker, which keeps it), and what is accepted but not durable stays near what arrives in
    /// one flush interval.
    fn held_back_until(&self) -> Option<Instant> {
        self.in_flight.as_ref()?;
        let since = self.unflushed_since?;
        Some(since + self.flush_every.max(HOLD_BACK_FLOOR))
    }

    /// Remembers that records were removed but the removal is not covered by a flush yet.
    fn note_removal(&mut self) {
        if self.removed_since.is_none() {
            self.removed_since = Some(Instant::now());
        }
    }

    /// Remembers that something is written but not covered by a flush yet.
    fn note_write(&mut self) {
        if self.unflushed_since.is_none() {
            self.unflushed_since = Some(Instant::now());
        }
    }

    /// Starts an fsync on a blocking thread covering everything written so far. Once it
    /// succeeded, the same thread updates the floor file if the last update is `FLOOR_EVERY`
    /// old (or `final_flush`), before the flush counts as done, so the floor never leads what
    /// is durable.
    fn start_flush(&mut self, final_flush: bool) -> Result<(), JournalError> {
        let now = Instant::now();
        // A removal's sled changes wait for their own deadline even when appends are fsynced
        // sooner: an fsync of sled costs a wake-up of its threads and a write of its log, and
        // the uplink removes after every batch.
        let with_meta = final_flush
            || self
                .removed_since
                .is_some_and(|since| now >= since + REMOVAL_FLUSH_EVERY);
        let job = match self.store.flush_job(with_meta) {
            Ok(job) => job,
            Err(JournalError::Storage { context, reason }) => {
                // Nothing written is lost: the records wait in memory (new appends are refused
                // once that buffer is full) and the write is tried again after `WRITE_RETRY`.
                if self.write_retry_at.is_none() {
                    tracing::error!(%reason, "cannot write the record log (a full disk?); retrying");
                }
                let error = JournalError::Storage { context, reason };
                if let Ok(mut failure) = self.stats.failure.lock() {
                    *failure = Some(format!("{error}; retrying"));
                }
                // Whatever made the flush due stays due; the retry waits a moment (with
                // `flush = "0s"`, or a removal long due, it would otherwise spin).
                self.write_retry_at = Some(Instant::now() + WRITE_RETRY);
                return Err(error);
            }
            Err(err) => {
                self.fail(err.to_string());
                // Nothing will be flushed any more: no deadline to come back to.
                self.unflushed_since = None;
                self.flush_now = false;
                self.removed_since = None;
                return Err(err);
            }
        };
        if self.write_retry_at.take().is_some() && self.failed.is_none() {
            tracing::info!("the record log is writable again");
            if let Ok(mut failure) = self.stats.failure.lock() {
                *failure = None;
            }
        }
        self.unflushed_since = None;
        self.flush_now = false;
        if with_meta {
            self.removed_since = None;
        }
        let floor_due = final_flush
            || self
                .floor_written
                .is_none_or(|written| now.duration_since(written) >= FLOOR_EVERY);
        let floor = match &self.store.floor_dir {
            Some(dir) if floor_due => {
                self.floor_written = Some(now);
                Some((dir.clone(), self.store.floor()))
            }
            _ => None,
        };
        self.in_flight = Some(InFlight {
            task: tokio::task::spawn_blocking(move || {
                job.run()?;
                if let Some((dir, floor)) = floor {
                    // The floor is a safeguard: failing to update it loses no record.
                    if let Err(reason) = super::floor::write(&dir, &floor) {
                        tracing::warn!(%reason, "cannot update the journal floor");
                    }
                }
                Ok(())
            }),
            position: self.store.next_position - 1,
            seq: self.store.next_seq - 1,
        });
        Ok(())
    }

    /// Publishes the result of the flush that just finished.
    fn finish_flush(&mut self, done: Result<(), JournalError>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match done {
            Ok(()) => {
                self.durable_seq = self.durable_seq.max(flight.seq);
                self.stats
                    .durable_seq
                    .store(self.durable_seq, Ordering::Relaxed);
                self.mark.send_modify(|mark| {
                    mark.position = mark.position.max(flight.position);
                });
            }
            Err(err) => self.fail(err.to_string()),
        }
    }

    /// Marks the journal failed after an fsync error (or a failed batch that could not be taken
    /// back): nothing more can be promised durable.
    fn fail(&mut self, reason: String) {
        tracing::error!(%reason, "journal failed; refusing new records");
        let reason: Arc<str> = reason.into();
        self.failed = Some(reason.clone());
        if let Ok(mut failure) = self.stats.failure.lock() {
            *failure = Some(reason.to_string());
        }
        self.mark.send_modify(|mark| mark.failed = Some(reason));
    }

    /// Copies the store's counters into the shared figures.
    fn publish_stats(&self) {
        let stats = &self.stats;
        stats.next_seq.store(self.store.next_seq, Ordering::Relaxed);
        stats
            .backlog_records
            .store(self.store.backlog_records, Ordering::Relaxed);
        stats
            .backlog_bytes
            .store(self.store.backlog_bytes, Ordering::Relaxed);
        stats
            .dead_records
            .store(self.store.dead_records, Ordering::Relaxed);
    }

    /// Final flush and close; consumes the actor so the database is dropped before returning.
    async fn shutdown(mut self) -> Result<(), JournalError> {
        self.inbox.close();
        if self.in_flight.is_some() {
            let done = wait_in_flight(&mut self.in_flight).await;
            self.finish_flush(done);
        }
        // Appends still queued behind Close are answered "closed" by dropping their replies.
        let mut result = Ok(());
        if self.failed.is_none() {
            let recorded = self.quota.at_close(&mut self.store);
            self.count_quota(Enforced {
                evicted: 0,
                recorded,
            });
            // Last write of the session, so the next open can skip counting every record.
            if let Err(err) = self.store.save_counters() {
                tracing::warn!(error = %err, "cannot save the journal counters");
            }
            match self.start_flush(true) {
                Ok(()) => {
                    let done = wait_in_flight(&mut self.in_flight).await;
                    if let Err(err) = &done {
                        result = Err(JournalError::Flush(err.to_string()));
                    }
                    self.finish_flush(done);
                }
                Err(err) => result = Err(JournalError::Flush(err.to_string())),
            }
        } else if let Some(failed) = &self.failed {
            result = Err(JournalError::Flush(failed.to_string()));
        }
        self.publish_stats();
        // Dropping the database can block (it closes files and joins sled's threads).
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        result
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the running flush (the caller checked there is one).
async fn wait_in_flight(in_flight: &mut Option<InFlight>) -> Result<(), JournalError> {
    match in_flight {
        Some(flight) => match (&mut flight.task).await {
            Ok(result) => result,
            Err(err) => Err(JournalError::Flush(format!("flush task failed: {err}"))),
        },
        None => std::future::pending().await,
    }
}
