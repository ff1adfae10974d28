//! `PopulationSyncService`: bulk streams of citizens' facts and declared accounts from the
//! population platform.
//!
//! Both RPCs run the same loop: read up to [`SYNC_BATCH`] records, validate each (a bad
//! one is rejected alone), apply the batch in one transaction, then acknowledge it with
//! the last record committed and the counts so far. The acknowledgement is sent only
//! after the commit, so everything up to it is durable. The registry's per-record ledger
//! makes anything sent again after a cut stream change nothing: the same version of a
//! record is answered with the outcome recorded the first time (APPLIED, or REJECTED with
//! the same reason, field and message), so the refusals of batches committed after the
//! last acknowledgement still reach the client; an older version is STALE.

use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{record_error, sync_account, sync_citizen};
use super::resolver::next_batch;
use super::{AppState, Call};
use crate::domain::{Reason, RecordOutcome, Rejection};
use crate::proto::population_sync_service_server::PopulationSyncService;
use crate::proto::{
    SyncAccountsRequest, SyncAccountsResponse, SyncBatchResult, SyncCitizensRequest,
    SyncCitizensResponse,
};
use crate::security::limits::RpcClass;
use crate::store::{Store, StoreResult, WriteContext};
use crate::telemetry::metrics as m;

/// Records applied per transaction.
pub const SYNC_BATCH: usize = 1000;

/// How long a batch waits for more records after its first.
const SYNC_LINGER: Duration = Duration::from_millis(20);

/// Acknowledgements buffered for a client that is slow to read them.
const ACK_BUFFER: usize = 4;

type AckStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

pub struct PopulationSyncHandler {
    state: AppState,
}

impl PopulationSyncHandler {
    pub fn new(state: AppState) -> Self {
        PopulationSyncHandler { state }
    }
}

/// How one stream reads and applies its records.
trait SyncKind: Send + Sync + 'static {
    type Message: Send + Sync + 'static;
    type Record: Send + Sync + 'static;
    /// What the stream answers after each committed batch.
    type Response: Send + 'static;
    fn respond(result: SyncBatchResult) -> Self::Response;
    const NAME: &'static str;
    /// The RPC's name, for the open-streams gauge.
    const METHOD: &'static str;
    fn record_id(m: &Self::Message) -> &str;
    fn parse(m: &Self::Message, today: time::Date) -> Result<Self::Record, Rejection>;
    fn apply<'a>(
        store: &'a dyn Store,
        ctx: &'a WriteContext,
        batch: &'a [Self::Record],
    ) -> BoxFuture<'a, StoreResult<Vec<RecordOutcome>>>;
}

fn missing_record() -> Rejection {
    Rejection::field(Reason::FieldRequired, "record", "record is required")
}

struct Citizens;

impl SyncKind for Citizens {
    type Message = SyncCitizensRequest;
    type Record = crate::domain::SyncCitizen;
    type Response = SyncCitizensResponse;
    const NAME: &'static str = "citizens";
    const METHOD: &'static str = "SyncCitizens";

    fn respond(result: SyncBatchResult) -> SyncCitizensResponse {
        SyncCitizensResponse {
            result: Some(result),
        }
    }

    fn record_id(m: &SyncCitizensRequest) -> &str {
        m.record
            .as_ref()
            .map(|r| r.record_id.as_str())
            .unwrap_or("")
    }

    fn parse(m: &SyncCitizensRequest, today: time::Date) -> Result<Self::Record, Rejection> {
        sync_citizen(m.record.as_ref().ok_or_else(missing_record)?, today)
    }

    fn apply<'a>(
        store: &'a dyn Store,
        ctx: &'a WriteContext,
        batch: &'a [Self::Record],
    ) -> BoxFuture<'a, StoreResult<Vec<RecordOutcome>>> {
        store.sync_citizens(ctx, batch)
    }
}

struct Accounts;

impl SyncKind for Accounts {
    type Message = SyncAccountsRequest;
    type Record = crate::domain::SyncAccount;
    type Response = SyncAccountsResponse;
    const NAME: &'static str = "accounts";
    const METHOD: &'static str = "SyncAccounts";

    fn respond(result: SyncBatchResult) -> SyncAccountsResponse {
        SyncAccountsResponse {
            result: Some(result),
        }
    }

    fn record_id(m: &SyncAccountsRequest) -> &str {
        m.record
            .as_ref()
            .map(|r| r.record_id.as_str())
            .unwrap_or("")
    }

    fn parse(m: &SyncAccountsRequest, _today: time::Date) -> Result<Self::Record, Rejection> {
        sync_account(m.record.as_ref().ok_or_else(missing_record)?)
    }

    fn apply<'a>(
        store: &'a dyn Store,
        ctx: &'a WriteContext,
        batch: &'a [Self::Record],
    ) -> BoxFuture<'a, StoreResult<Vec<RecordOutcome>>> {
        store.sync_accounts(ctx, batch)
    }
}

impl PopulationSyncHandler {
    fn start<K: SyncKind>(
        &self,
        request: Request<Streaming<K::Message>>,
    ) -> Result<Response<AckStream<K::Response>>, Status> {
        let call = Call::of(&request)?;
        let admitted = call.admit_stream(&self.state, RpcClass::Write, K::METHOD)?;
        let state = self.state.clone();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        tokio::spawn(async move {
            let _admitted = admitted;
            match sync_loop::<K>(&state, &call, inbound, &tx).await {
                Ok(ack) => tracing::info!(
                    stream = K::NAME,
                    records = ack.records_committed,
                    applied = ack.applied,
                    stale = ack.stale,
                    rejected = ack.rejected,
                    "sync stream finished"
                ),
                Err(status) => {
                    tracing::warn!(stream = K::NAME, code = ?status.code(), "sync stream ended with an error");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl PopulationSyncService for PopulationSyncHandler {
    type SyncCitizensStream = AckStream<SyncCitizensResponse>;
    type SyncAccountsStream = AckStream<SyncAccountsResponse>;

    async fn sync_citizens(
        &self,
        request: Request<Streaming<SyncCitizensRequest>>,
    ) -> Result<Response<Self::SyncCitizensStream>, Status> {
        self.start::<Citizens>(request)
    }

    async fn sync_accounts(
        &self,
        request: Request<Streaming<SyncAccountsRequest>>,
    ) -> Result<Response<Self::SyncAccountsStream>, Status> {
        self.start::<Accounts>(request)
    }
}

/// Applies batches until the client ends the stream; answers the last acknowledgement.
/// When the server shuts down, the records already read are applied and acknowledged
/// (a final acknowledgement, even when nothing was held), and the stream ends
/// UNAVAILABLE (SHUTTING_DOWN): the client resumes after the last record acknowledged.
async fn sync_loop<K: SyncKind>(
    state: &AppState,
    call: &Call,
    mut inbound: Streaming<K::Message>,
    tx: &mpsc::Sender<Result<K::Response, Status>>,
) -> Result<SyncBatchResult, Status> {
    let mut totals = SyncBatchResult::default();
    let mut stop = state.shutting_down.subscribe();
    loop {
        let batch = next_batch(call, &mut inbound, SYNC_BATCH, SYNC_LINGER, &mut stop).await?;
        if batch.records.is_empty() && !batch.stopped {
            return Ok(totals);
        }
        let ack = if batch.records.is_empty() {
            totals.clone()
        } else {
            apply_batch::<K>(state, call, &batch.records, &mut totals).await?
        };
        if tx.send(Ok(K::respond(ack))).await.is_err() {
            // The client went away after the commit; it resumes from its last ack and
            // what it sends again is answered with its recorded outcome.
            return Ok(totals);
        }
        if batch.stopped {
            tracing::info!(
                stream = K::NAME,
                records = totals.records_committed,
                "sync stream ended by the shutdown after its final acknowledgement"
            );
            return Err(super::call::shutting_down(&call.request_id));
        }
    }
}

/// Validates and applies one batch in one transaction; answers its acknowledgement and
/// adds it to `totals`.
async fn apply_batch<K: SyncKind>(
    state: &AppState,
    call: &Call,
    batch: &[K::Message],
    totals: &mut SyncBatchResult,
) -> Result<SyncBatchResult, Status> {
    let last_record_id = batch.last().map(K::record_id).unwrap_or("").to_owned();
    call.pace(state, batch.len()).await;
    let now = state.now();
    let today = now.date();
    let mut valid: Vec<K::Record> = Vec::with_capacity(batch.len());
    let mut refused: Vec<Option<Rejection>> = Vec::with_capacity(batch.len());
    for message in batch {
        match K::parse(message, today) {
            Ok(record) => {
                valid.push(record);
                refused.push(None);
            }
            Err(r) => refused.push(Some(r)),
        }
    }
    let ctx = WriteContext {
        actor: call.caller.client_id.clone(),
        idempotency: None,
        now,
        authority: call.authority(),
    };
    let mut outcomes = K::apply(state.store.as_ref(), &ctx, &valid)
        .await
        .map_err(|e| call.fail(e))?
        .into_iter();
    let mut ack = SyncBatchResult {
        last_record_id,
        ..SyncBatchResult::default()
    };
    for (message, refused) in batch.iter().zip(refused) {
        let outcome = match refused {
            None => outcomes.next().ok_or_else(|| {
                Status::internal("the store answered fewer outcomes than records")
            })?,
            Some(r) => RecordOutcome::Rejected(r),
        };
        let (label, reason) = match outcome {
            RecordOutcome::Applied => {
                totals.applied += 1;
                ("applied", "")
            }
            RecordOutcome::Stale => {
                totals.stale += 1;
                ("stale", "")
            }
            RecordOutcome::Rejected(r) => {
                totals.rejected += 1;
                ack.errors.push(record_error(K::record_id(message), &r));
                ("rejected", r.reason.as_str())
            }
        };
        metrics::counter!(
            m::SYNC_RECORDS,
            "kind" => K::NAME,
            "outcome" => label,
            "reason" => reason
        )
        .increment(1);
    }
    totals.records_committed += batch.len() as u64;
    ack.records_committed = totals.records_committed;
    ack.applied = totals.applied;
    ack.stale = totals.stale;
    ack.rejected = totals.rejected;
    totals.last_record_id = ack.last_record_id.clone();
    Ok(ack)
}
