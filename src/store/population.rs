//! Population sync in the database: a batch of the population platform's records read,
//! planned (`domain::planner`) and written (`batch.rs`) in one transaction.
//!
//! Every statement handles the whole batch (keys as one set, new rows appended by COPY,
//! existing ones upserted), so a batch of 1,000 records costs about a dozen statements,
//! not thousands. A batch that loses a race with a concurrent writer (a row it could not
//! lock in advance, a deadlock, a serialization failure) is rolled back and planned again
//! against the winner's committed state.

use std::collections::HashMap;

use super::batch::{load, load_accounts, load_holders, load_ledger, lost_race, write_work};
use super::dialect::{select_in, Dialect, Tx};
use super::resolution_model::{refresh, set_statuses};
use super::sql::{text_keys, Sql};
use super::sql_store::SqlStore;
use super::{
    corrupt, BatchApplied, CitizenRecord, CitizenUpsert, ModelFormat, StoreError, StoreResult,
    WriteContext,
};
use crate::domain::planner::{AccountKeyTuple, Loaded, SyncRecord, SyncStream, Work};
use crate::domain::{CitizenId, CitizenStatus, LegacyId, RecordOutcome, SyncCitizen};

/// How often a batch is retried after losing a race with a concurrent transaction (a
/// unique violation on a row it could not lock in advance, or a deadlock).
const BATCH_ATTEMPTS: usize = 5;

impl<D: Dialect> SqlStore<D> {
    /// Plans and writes a sync batch of `R::STREAM` in one transaction, retrying when it
    /// loses a race.
    pub(super) async fn sync_batch<R: SyncRecord>(
        &self,
        ctx: &WriteContext,
        batch: &[R],
        plan: impl Fn(&WriteContext, &[R], &Loaded) -> Work,
    ) -> StoreResult<BatchApplied> {
        if batch.is_empty() {
            return Ok(BatchApplied::default());
        }
        let stream = R::STREAM;
        let mut citizens: Vec<CitizenId> = batch.iter().map(|r| r.citizen_id().clone()).collect();
        citizens.sort();
        citizens.dedup();
        let record_ids: Vec<&str> = batch.iter().map(R::record_id).collect();
        let legacy: Vec<String> = batch.iter().flat_map(R::legacy_ids).collect();
        let mut account_keys: Vec<AccountKeyTuple> =
            batch.iter().filter_map(R::account_key).collect();
        account_keys.sort_by(|a, b| {
            (a.0.as_str(), &a.1, a.2.as_str()).cmp(&(b.0.as_str(), &b.1, b.2.as_str()))
        });
        account_keys.dedup();
        let mut last = None;
        for _ in 0..BATCH_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            tx.run(D::BULK_PREAMBLE).await?;
            // The batch reads and plans inside its write transaction, on both backends.
            // On SQLite that holds the one writer connection meanwhile, so reading and
            // planning on a reader's snapshot first (keeping the plan only where no write
            // since touched its keys) was tried: a 200 k-citizen load took 5-13% less,
            // but at 1 M it made no difference (251 against 245 s): the writer must bring
            // the same pages into its own cache to write the rows, and its write phase
            // grew by what the reads no longer took (held 93.5 against 94 ms a batch).
            let attempt = async {
                let mut loaded = load(&mut tx, &citizens).await?;
                load_ledger(&mut tx, &mut loaded, stream, &record_ids, &legacy).await?;
                if stream == SyncStream::Accounts {
                    load_accounts(&mut tx, &mut loaded, &citizens, &[]).await?;
                }
                load_holders(&mut tx, &mut loaded, &account_keys).await?;
                Ok::<_, StoreError>(plan(ctx, batch, &loaded))
            }
            .await;
            let work = match attempt {
                Ok(x) => x,
                Err(e) if lost_race(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let written = match write_work(&mut tx, ctx, &work).await {
                // The changed citizens' rows of the resolution read model commit with
                // the batch.
                Ok(Some(last_event)) => {
                    update_model(&mut tx, self.options.model_format, stream, &citizens, &work)
                        .await
                        .map(|()| Some(last_event))
                }
                other => other,
            };
            let last_event = match written {
                Ok(Some(last_event)) => last_event,
                Ok(None) => {
                    last = Some(corrupt("sync batch lost a race on every attempt"));
                    continue;
                }
                Err(e) if lost_race(&e) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match tx.commit().await {
                Err(e) => {
                    let e = StoreError::Database(e);
                    if lost_race(&e) {
                        last = Some(e);
                        continue;
                    }
                    return Err(e);
                }
                Ok(()) => {
                    self.tick();
                    return Ok(BatchApplied {
                        outcomes: work.outcomes,
                        last_event,
                    });
                }
            }
        }
        Err(last.unwrap_or_else(|| corrupt("sync retries exhausted")))
    }

    /// One citizen record through the population-sync path (its rules, history and
    /// event), under a record id of the citizen's own.
    pub(super) async fn upsert_citizen_record(
        &self,
        ctx: &WriteContext,
        rec: &CitizenRecord,
    ) -> StoreResult<CitizenUpsert> {
        let existed: Option<(i32,)> = self
            .reader()
            .await?
            .fetch_optional(
                Sql::new("SELECT 1 FROM citizens WHERE citizen_id = $1")
                    .bind(rec.citizen_id.as_str()),
            )
            .await?;
        let record = SyncCitizen {
            record_id: format!("citizen:{}", rec.citizen_id.as_str()),
            version: rec.source_version,
            citizen_id: rec.citizen_id.clone(),
            full_name: rec
                .full_name
                .as_deref()
                .map(crate::domain::name::normalize_name),
            date_of_birth: rec.date_of_birth.clone(),
            status: rec.status,
            died_on: rec.died_on.clone(),
            legacy_ids: Vec::new(),
        };
        // The same version again is answered as before by the sync streams; this command
        // keeps its own answer for it: ignored (nothing planned to write).
        let plan = |ctx: &WriteContext, batch: &[SyncCitizen], loaded: &Loaded| {
            let mut work = crate::domain::planner::plan_citizens(ctx, batch, loaded);
            if work.ledger.is_empty() && work.outcomes == [RecordOutcome::Applied] {
                work.outcomes = vec![RecordOutcome::Stale];
            }
            work
        };
        let outcome = self.sync_batch(ctx, &[record], plan).await?.outcomes.pop();
        match outcome {
            Some(RecordOutcome::Applied) if existed.is_some() => Ok(CitizenUpsert::Updated),
            Some(RecordOutcome::Applied) => Ok(CitizenUpsert::Created),
            Some(RecordOutcome::Stale) => Ok(CitizenUpsert::Stale),
            Some(RecordOutcome::Rejected(r)) => Err(r.into()),
            None => Err(corrupt("no outcome for the citizen record")),
        }
    }

    /// The citizens that registered legacy numbers belong to (unknown numbers are absent).
    pub(super) async fn legacy_owners(
        &self,
        ids: &[LegacyId],
    ) -> StoreResult<HashMap<LegacyId, CitizenId>> {
        let mut conn = self.reader().await?;
        let rows: Vec<(String, String)> = select_in(
            &mut conn,
            "SELECT legacy_id, citizen_id FROM citizen_aliases WHERE legacy_id",
            "",
            text_keys(ids.iter().map(LegacyId::as_str)),
        )
        .await?;
        let mut out = HashMap::new();
        for (legacy, citizen) in rows {
            let legacy = LegacyId::parse(&legacy).map_err(|_| corrupt("legacy id"))?;
            out.insert(legacy, CitizenId::from_stored(citizen));
        }
        Ok(out)
    }
}

/// Brings the resolution read model up to a written batch. The citizen rows a batch
/// wrote change only their statuses in the model (names and dates of birth are not in
/// it), set without re-reading; the citizens whose accounts or preferences it may have
/// changed are refreshed from the tables: every citizen of an accounts batch (declaring
/// an account first creates an unknown citizen, whose status is read with the rest) and
/// the holders of the accounts and defaults it wrote (a citizens batch writes none).
async fn update_model<D: Dialect>(
    tx: &mut Tx<D>,
    format: ModelFormat,
    stream: SyncStream,
    batch: &[CitizenId],
    work: &Work,
) -> StoreResult<()> {
    let mut reread: Vec<&str> = match stream {
        SyncStream::Accounts => batch.iter().map(CitizenId::as_str).collect(),
        SyncStream::Citizens => Vec::new(),
    };
    if stream == SyncStream::Citizens {
        let statuses: Vec<(&str, CitizenStatus)> = work
            .citizens
            .iter()
            .map(|c| (c.citizen_id.as_str(), c.state.status))
            .collect();
        set_statuses(tx, format, &statuses).await?;
    }
    reread.extend(
        work.accounts
            .iter()
            .chain(&work.new_accounts)
            .map(|a| a.citizen_id.as_str()),
    );
    reread.extend(
        work.preferences
            .iter()
            .map(|p| p.account.citizen_id.as_str()),
    );
    reread.sort_unstable();
    reread.dedup();
    refresh(tx, format, &reread).await
}
