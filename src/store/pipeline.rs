//! Sync batches in flight together, with the meaning of their order kept.
//!
//! A sync batch is one transaction, and most of its time is the database's: one batch at
//! a time leaves the client idle and one core of a two-core database server busy. The
//! [`Pipeline`] keeps up to `depth` batches running at once, under one rule: a batch
//! starts only when no earlier batch still running shares a key with it, the keys being
//! what a record's outcome depends on: its citizen, its record id (the ledger's versions),
//! its legacy numbers, and the account it declares (the one-holder rule across
//! citizens). Batches that share nothing commute, so running them together gives the
//! outcomes running them in order would; a batch that shares a key waits for the earlier
//! batches up to the last one it shares with. The outcomes come back in submission order.
//!
//! Isolation between the running batches is the store's (each batch locks its citizens
//! and retries when it loses a race, as with two clients streaming at once); the pipeline
//! adds only the order. A caller keeps one citizen's records in one batch where it can,
//! since a citizen split across two batches makes the second wait for the first.

use std::collections::{HashSet, VecDeque};
use std::future::Future;

use tokio::task::{JoinError, JoinHandle};

use crate::domain::planner::{AccountKeyTuple, SyncRecord};

/// What an earlier batch may decide for a later one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Citizen(String),
    Record(String),
    Legacy(String),
    Account(AccountKeyTuple),
}

fn keys_of<R: SyncRecord>(batch: &[R]) -> HashSet<Key> {
    let mut keys = HashSet::with_capacity(batch.len() * 3);
    for r in batch {
        keys.insert(Key::Citizen(r.citizen_id().as_str().to_owned()));
        keys.insert(Key::Record(r.record_id().to_owned()));
        keys.extend(r.legacy_ids().into_iter().map(Key::Legacy));
        keys.extend(r.account_key().map(Key::Account));
    }
    keys
}

struct Running<T> {
    keys: HashSet<Key>,
    task: JoinHandle<T>,
}

/// Up to `depth` sync batches running at once (see the module), each answering a `T`
/// (its outcomes, say, or the store's error).
pub struct Pipeline<T> {
    depth: usize,
    running: VecDeque<Running<T>>,
}

impl<T: Send + 'static> Pipeline<T> {
    /// A pipeline of `depth` batches (at least one: one is one batch at a time).
    pub fn new(depth: usize) -> Pipeline<T> {
        Pipeline {
            depth: depth.max(1),
            running: VecDeque::new(),
        }
    }

    /// Changes how many batches may run at once from the next [`Pipeline::submit`] on (at
    /// least one); batches already running are not stopped, the next waits for them.
    pub fn set_depth(&mut self, depth: usize) {
        self.depth = depth.max(1);
    }

    /// Starts `batch` through `run` once the rule allows it (waiting first for earlier
    /// batches it shares a key with, and for the oldest when `depth` are running).
    /// Answers what the batches that finished meanwhile answered, in submission order
    /// (an error: a batch's task panicked).
    pub async fn submit<R, F, Fut>(&mut self, batch: Vec<R>, run: F) -> Result<Vec<T>, JoinError>
    where
        R: SyncRecord,
        F: FnOnce(Vec<R>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let keys = keys_of(&batch);
        let mut finished = Vec::new();
        // The last running batch this one shares a key with: it and every batch before it
        // must finish first.
        let wait_through = self
            .running
            .iter()
            .rposition(|r| !r.keys.is_disjoint(&keys));
        let mut must_finish = wait_through.map_or(0, |i| i + 1);
        if self.running.len() - must_finish >= self.depth {
            must_finish = self.running.len() + 1 - self.depth;
        }
        for _ in 0..must_finish {
            finished.push(self.finish_oldest().await?);
        }
        self.running.push_back(Running {
            keys,
            task: tokio::spawn(run(batch)),
        });
        Ok(finished)
    }

    /// Waits for every running batch; their answers in submission order.
    pub async fn finish(&mut self) -> Result<Vec<T>, JoinError> {
        let mut finished = Vec::with_capacity(self.running.len());
        while !self.running.is_empty() {
            finished.push(self.finish_oldest().await?);
        }
        Ok(finished)
    }

    /// Callers call it only while a batch is running.
    async fn finish_oldest(&mut self) -> Result<T, JoinError> {
        match self.running.pop_front() {
            Some(oldest) => oldest.task.await,
            None => unreachable!("finish_oldest is called only while a batch is running"),
        }
    }
}

// Batches still running when the pipeline is dropped (an earlier batch failed, the
// client went away) are left to end on their own: each is one transaction that commits or
// rolls back, and a committed one is in the ledger for the client's resend. They are not
// aborted: a batch stopped inside a binary COPY (between `CopyDone` and the server's
// answer) would hand its connection back with an answer still on the wire, and the next
// statement on it would read that answer as its own (sqlx counts no pending reply for a
// COPY).

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::domain::{
        AccountKind, AccountRef, CitizenId, LegacyId, RecordOutcome, SyncAccount, SyncCitizen,
    };

    fn record(citizen: &str, record: &str) -> SyncCitizen {
        SyncCitizen {
            record_id: record.to_owned(),
            version: 1,
            citizen_id: CitizenId::parse(citizen).unwrap(),
            full_name: None,
            date_of_birth: None,
            status: crate::domain::CitizenStatus::Active,
            died_on: None,
            legacy_ids: Vec::new(),
        }
    }

    /// Runs batches that note when they start and end; the first takes longest.
    async fn run_batches(depth: usize, batches: Vec<Vec<SyncCitizen>>) -> Vec<String> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipeline = Pipeline::new(depth);
        let mut outcomes = Vec::new();
        for (i, batch) in batches.into_iter().enumerate() {
            let log = log.clone();
            outcomes.extend(
                pipeline
                    .submit(batch, move |b: Vec<SyncCitizen>| async move {
                        log.lock().unwrap().push(format!("start {i}"));
                        tokio::time::sleep(Duration::from_millis(if i == 0 { 60 } else { 5 }))
                            .await;
                        log.lock().unwrap().push(format!("end {i}"));
                        vec![RecordOutcome::Applied; b.len()]
                    })
                    .await
                    .unwrap(),
            );
        }
        outcomes.extend(pipeline.finish().await.unwrap());
        let total: usize = outcomes.iter().map(Vec::len).sum();
        log.lock()
            .unwrap()
            .push(format!("{} batches, {total} outcomes", outcomes.len()));
        let log = log.lock().unwrap().clone();
        log
    }

    #[tokio::test]
    async fn batches_sharing_nothing_run_together() {
        let log = run_batches(
            2,
            vec![
                vec![record("001085000001", "r1")],
                vec![record("001085000002", "r2")],
            ],
        )
        .await;
        assert_eq!(
            log,
            [
                "start 0",
                "start 1",
                "end 1",
                "end 0",
                "2 batches, 2 outcomes"
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_sharing_a_record_id_waits_for_the_earlier_one() {
        let log = run_batches(
            3,
            vec![
                vec![record("001085000001", "r1")],
                vec![record("001085000002", "r2")],
                vec![record("001085000003", "r1")],
            ],
        )
        .await;
        // Batch 2 shares r1 with batch 0: it waits for 0 (and for 1, which came before).
        assert_eq!(log[..2], ["start 0", "start 1"]);
        let start_2 = log.iter().position(|l| l == "start 2").unwrap();
        let end_0 = log.iter().position(|l| l == "end 0").unwrap();
        assert!(start_2 > end_0, "{log:?}");
    }

    /// Two batches of different citizens: `second` starts before the first ends unless
    /// it shares a key.
    async fn second_waits<R: SyncRecord + Send + 'static>(first: R, second: R) -> bool {
        let ended = Arc::new(Mutex::new(false));
        let mut pipeline = Pipeline::new(2);
        let e = ended.clone();
        pipeline
            .submit(vec![first], move |_| async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                *e.lock().unwrap() = true;
            })
            .await
            .unwrap();
        let e = ended.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        pipeline
            .submit(vec![second], move |_| async move {
                let _ = tx.send(*e.lock().unwrap());
            })
            .await
            .unwrap();
        pipeline.finish().await.unwrap();
        rx.await.unwrap()
    }

    fn account(citizen: &str, record: &str, account_ref: &str) -> SyncAccount {
        SyncAccount {
            record_id: record.to_owned(),
            version: 1,
            citizen_id: CitizenId::parse(citizen).unwrap(),
            kind: AccountKind::Ewallet,
            provider_code: "970418".to_owned(),
            account_ref: AccountRef::from_stored(account_ref.to_owned()),
            holder_name: None,
            confirmation: None,
            removed: false,
        }
    }

    #[tokio::test]
    async fn a_batch_sharing_a_citizen_waits_for_the_earlier_one() {
        let first = record("001085000001", "r1");
        assert!(second_waits(first.clone(), record("001085000001", "r2")).await);
        assert!(!second_waits(first, record("001085000002", "r2")).await);
    }

    #[tokio::test]
    async fn a_claim_on_an_account_an_earlier_batch_declares_waits_for_it() {
        // The one-holder rule: who holds the account depends on which batch goes first.
        let holder = account("001085000001", "a1", "0912345678");
        let claimant = account("001085000002", "a2", "0912345678");
        assert!(second_waits(holder.clone(), claimant).await);
        let other = account("001085000002", "a2", "0987654321");
        assert!(!second_waits(holder, other).await);
    }

    #[tokio::test]
    async fn a_record_registering_a_legacy_number_of_an_earlier_batch_waits_for_it() {
        let mut first = record("001085000001", "r1");
        first.legacy_ids = vec![LegacyId::parse("123456789").unwrap()];
        let mut second = record("001085000002", "r2");
        second.legacy_ids = first.legacy_ids.clone();
        assert!(second_waits(first, second.clone()).await);
        second.legacy_ids.clear();
        assert!(!second_waits(record("001085000001", "r1"), second).await);
    }

    #[tokio::test]
    async fn a_depth_lowered_to_one_makes_the_next_batch_wait_for_every_running_one() {
        let ended = Arc::new(Mutex::new(0));
        let mut pipeline = Pipeline::new(2);
        for (citizen, record_id) in [("001085000001", "r1"), ("001085000002", "r2")] {
            let e = ended.clone();
            pipeline
                .submit(vec![record(citizen, record_id)], move |_| async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    *e.lock().unwrap() += 1;
                })
                .await
                .unwrap();
        }
        pipeline.set_depth(1);
        let e = ended.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        pipeline
            .submit(vec![record("001085000003", "r3")], move |_| async move {
                let _ = tx.send(*e.lock().unwrap());
            })
            .await
            .unwrap();
        pipeline.finish().await.unwrap();
        assert_eq!(rx.await.unwrap(), 2, "both earlier batches had ended");
    }

    #[tokio::test]
    async fn no_more_than_depth_batches_run_at_once() {
        let log = run_batches(
            1,
            vec![
                vec![record("001085000001", "r1")],
                vec![record("001085000002", "r2")],
            ],
        )
        .await;
        assert_eq!(
            log,
            [
                "start 0",
                "end 0",
                "start 1",
                "end 1",
                "2 batches, 2 outcomes"
            ]
        );
    }
}
