//! `ChangeFeed`: every change in commit order, from any position, then live.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, consumer_name, feed_position_in as position_in, timestamp_out};
use super::{AppState, Call};
use crate::security::Scope;
use serde::{Deserialize as _, Serialize};

use crate::domain::{Account, CitizenStatus, Reason, Rejection, Timestamp};
use crate::proto::change_feed_server::ChangeFeed;
use crate::proto::{
    CommitPositionRequest, CommitPositionResponse, FeedEvent, GetPositionRequest,
    GetPositionResponse, GetSyncDigestRequest, GetSyncDigestResponse, SubscribeRequest,
    WatchListEdit, WatchListSummary,
};
use crate::security::limits::RpcClass;
use crate::store::{Event, StoreResult};

/// Events read per query while catching up.
const PAGE: u32 = 1000;

/// Events buffered for a subscriber that reads slowly (then the reader waits).
const BUFFER: usize = 1024;

/// Most ids added or removed per watch-list message.
const MAX_WATCH_EDIT: usize = 10_000;

/// How long a live subscriber waits without a signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

pub struct ChangeFeedService {
    state: AppState,
}

impl ChangeFeedService {
    pub fn new(state: AppState) -> Self {
        ChangeFeedService { state }
    }
}

/// Which events a subscriber wants.
struct Filter {
    types: HashSet<String>,
    programs: HashSet<String>,
}

impl Filter {
    /// The event's type is wanted (checked before the event is converted).
    fn wants_type(&self, e: &Event) -> bool {
        self.types.is_empty() || self.types.contains(&e.event_type)
    }

    /// The event's program is wanted: events about one program's preference or payout
    /// (DEFAULT_CHANGED, PAYOUT_FAILURE_REPORTED, `program_code` "" for the default) pass
    /// when it is one of the programs asked for; the others always pass.
    fn wants_program(&self, e: &FeedEvent) -> bool {
        self.programs.is_empty()
            || !matches!(
                e.event_type.as_str(),
                "DEFAULT_CHANGED" | "PAYOUT_FAILURE_REPORTED"
            )
            || self.programs.contains(&e.program_code)
    }
}

/// Replaces every `account_ref` in a payload by its masked form.
fn mask_payload(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "account_ref" {
                    if let serde_json::Value::String(s) = v {
                        *s = crate::domain::mask::mask_tail(s, 4);
                    }
                } else {
                    mask_payload(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_payload),
        _ => {}
    }
}

/// The version of the API's payload shapes (`FeedEvent.payload_version`).
pub const PAYLOAD_VERSION: u32 = 1;

/// A stored event as the API presents it: typed fields for what consumers act on, and
/// the payload in the API's names (the stored JSON is the domain's serialisation, an
/// internal format). Account numbers are masked unless `full`.
pub fn event_out(e: Event, full: bool) -> FeedEvent {
    let (account, program_code, citizen_status, payload_json) =
        if e.event_type.starts_with("ACCOUNT_") {
            // The payload is the account itself: read it straight into the domain type
            // and write it straight out in the API's shape (no JSON tree, the common case).
            let account: Option<Account> = serde_json::from_str(&e.payload).ok();
            let json = account
                .as_ref()
                .and_then(|a| serde_json::to_string(&ApiAccount::of(a, full)).ok())
                .unwrap_or_default();
            (account, String::new(), Default::default(), json)
        } else {
            other_payload(&e, full)
        };
    FeedEvent {
        position: e.feed_position.unwrap_or_default().max(0) as u64,
        event_id: e.event_id.to_string(),
        occurred_at: Some(timestamp_out(e.occurred_at)),
        event_type: e.event_type,
        citizen_id: e.citizen_id,
        account_id: e.account_id.map(|a| a.to_string()).unwrap_or_default(),
        actor: e.actor,
        reason: e.reason,
        payload_json,
        account: account.as_ref().map(|a| convert::account_out(a, full)),
        program_code,
        citizen_status: citizen_status.into(),
        payload_version: PAYLOAD_VERSION,
        actor_capacity: convert::capacity_out(e.actor_capacity).into(),
    }
}

/// The payload of an event that is not an account's own (defaults, citizens' status,
/// duplicate claims, payout failures): the account it names, its program, the citizen's
/// new status, and the JSON in the API's names.
fn other_payload(
    e: &Event,
    full: bool,
) -> (Option<Account>, String, crate::proto::CitizenStatus, String) {
    let Ok(mut payload) = serde_json::from_str::<serde_json::Value>(&e.payload) else {
        return (None, String::new(), Default::default(), String::new());
    };
    let account: Option<Account> = payload
        .get("account")
        .and_then(|a| Account::deserialize(a).ok());
    let program_code = payload
        .get("program_code")
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_owned();
    let citizen_status = match e.event_type.as_str() {
        "CITIZEN_STATUS_CHANGED" => payload
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(CitizenStatus::parse)
            .map(convert::citizen_status_out)
            .unwrap_or_default(),
        _ => Default::default(),
    };
    if let (Some(a), serde_json::Value::Object(map)) = (&account, &mut payload) {
        if let Ok(api) = serde_json::to_value(ApiAccount::of(a, full)) {
            map.insert("account".into(), api);
        }
    }
    api_times(&mut payload);
    if !full {
        mask_payload(&mut payload);
    }
    (account, program_code, citizen_status, payload.to_string())
}

/// An account in the API's names (as the `Account` message's JSON would read).
#[derive(Serialize)]
struct ApiAccount<'a> {
    account_id: uuid::Uuid,
    citizen_id: &'a str,
    kind: &'static str,
    provider_code: &'a str,
    account_ref: std::borrow::Cow<'a, str>,
    account_ref_masked: bool,
    holder_name: Option<&'a str>,
    declared_holder_name: Option<&'a str>,
    status: &'static str,
    verification: Option<ApiVerification<'a>>,
    version: u64,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct ApiVerification<'a> {
    method: &'static str,
    verified_by: &'a str,
    verified_at: String,
    evidence_ref: &'a str,
    capacity: Option<&'static str>,
}

impl<'a> ApiAccount<'a> {
    fn of(a: &'a Account, full: bool) -> ApiAccount<'a> {
        ApiAccount {
            account_id: a.id,
            citizen_id: a.citizen_id.as_str(),
            kind: a.kind.as_str(),
            provider_code: &a.provider_code,
            account_ref: if full {
                a.account_ref.as_str().into()
            } else {
                a.account_ref.masked().into()
            },
            account_ref_masked: !full,
            holder_name: a.holder_name.as_deref(),
            declared_holder_name: a.declared_holder_name.as_deref(),
            status: a.status.as_str(),
            verification: a.verification.as_ref().map(|v| ApiVerification {
                method: v.method.as_str(),
                verified_by: &v.verified_by,
                verified_at: v.verified_at.to_rfc3339(),
                evidence_ref: &v.evidence_ref,
                capacity: v.capacity.map(|c| c.as_str()),
            }),
            version: a.version,
            created_at: a.created_at.to_rfc3339(),
            updated_at: a.updated_at.to_rfc3339(),
        }
    }
}

/// Stored instants are microseconds; the API writes them as RFC 3339 (`*_at` fields).
fn api_times(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        for (key, v) in map.iter_mut() {
            match v.as_i64() {
                Some(micros) if key.ends_with("_at") => {
                    *v = serde_json::Value::String(Timestamp(micros).to_rfc3339());
                }
                _ => api_times(v),
            }
        }
    }
}

#[tonic::async_trait]
impl ChangeFeed for ChangeFeedService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<FeedEvent, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = Call::of(&request)?;
        let admitted = call.admit(&self.state, RpcClass::Read)?;
        let req = request.into_inner();
        let consumer = consumer_name(&req.consumer).map_err(|r| call.reject(r))?;
        let watched = if consumer.is_empty() {
            false
        } else {
            self.state
                .store
                .watch_list_size(&call.caller.client_id, &consumer)
                .await
                .map_err(|e| call.fail(e))?
                > 0
        };
        if !watched && !call.caller.has(Scope::EventsAll) {
            // Data minimisation: a subscriber sees only the citizens it serves.
            return Err(call.reject(Rejection::new(
                Reason::WatchListRequired,
                "without the events.all scope a subscription must name a consumer whose \
                 watch list holds the citizens it serves (EditWatchList)",
            )));
        }
        let mut after =
            position_in("after_position", req.after_position).map_err(|r| call.reject(r))?;
        if req.from_consumer_position {
            if consumer.is_empty() {
                return Err(call.reject(Rejection::field(
                    Reason::FieldRequired,
                    "consumer",
                    "from_consumer_position needs the consumer's name",
                )));
            }
            after = self
                .state
                .store
                .consumer_position(&call.caller.client_id, &consumer)
                .await
                .map_err(|e| call.fail(e))?
                .unwrap_or(0);
        }
        let pruned = self
            .state
            .store
            .feed_pruned_through()
            .await
            .map_err(|e| call.fail(e))?;
        if after < pruned {
            return Err(call.reject(Rejection::field(
                Reason::FeedPositionPruned,
                "after_position",
                format!(
                    "events up to position {pruned} were pruned; the earliest position kept is {} \
                     (resume after {pruned} and rebuild from a snapshot)",
                    pruned + 1
                ),
            )));
        }
        let filter = Filter {
            types: req.event_types.into_iter().collect(),
            programs: req.program_codes.into_iter().collect(),
        };
        let full = call.caller.has(Scope::ResolveFull);
        let store = self.state.store.clone();
        let mut shutting_down = self.state.shutting_down.subscribe();
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            let _admitted = admitted;
            let mut changes = store.changes();
            let client = call.caller.client_id.clone();
            // While catching up, the next page is read while this one is converted and
            // sent (the database works on the other core).
            let mut prefetched: Option<tokio::task::JoinHandle<StoreResult<Vec<Event>>>> = None;
            loop {
                // Mark the signal seen before reading: a change after this read wakes us.
                changes.borrow_and_update();
                let read = async {
                    if let Some(next) = prefetched.take() {
                        let page = next.await.map_err(|e| {
                            crate::store::StoreError::Corrupt(format!("reading ahead: {e}"))
                        })??;
                        return Ok((page, None));
                    }
                    if !watched {
                        return Ok((store.feed_after(after, PAGE).await?, None));
                    }
                    // Every position up to the head is visible: once no watched event
                    // remains below it, the next read can start there.
                    let head = store.feed_head().await?;
                    let page = store
                        .feed_after_watched(after, &client, &consumer, PAGE)
                        .await?;
                    Ok::<_, crate::store::StoreError>((page, Some(head)))
                };
                let page = match read.await {
                    Ok((page, head)) => {
                        if page.is_empty() {
                            if let Some(head) = head {
                                after = after.max(head);
                            }
                        }
                        page
                    }
                    Err(e) => {
                        let _ = tx.send(Err(call.fail(e))).await;
                        return;
                    }
                };
                if *shutting_down.borrow_and_update() {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the server is shutting down; resume after the last position received",
                        )))
                        .await;
                    return;
                }
                if page.is_empty() {
                    tokio::select! {
                        _ = tokio::time::timeout(SAFETY_TICK, changes.changed()) => {}
                        _ = shutting_down.changed() => {}
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                if !watched && page.len() == PAGE as usize {
                    if let Some(last) = page.last().and_then(|e| e.feed_position) {
                        let store = store.clone();
                        prefetched =
                            Some(tokio::spawn(
                                async move { store.feed_after(last, PAGE).await },
                            ));
                    }
                }
                for e in page {
                    after = e.feed_position.unwrap_or(after);
                    if !filter.wants_type(&e) {
                        continue;
                    }
                    let e = event_out(e, full);
                    if filter.wants_program(&e) && tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_position(
        &self,
        request: Request<CommitPositionRequest>,
    ) -> Result<Response<CommitPositionResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let req = request.into_inner();
        let consumer = consumer_name(&req.consumer).map_err(|r| call.reject(r))?;
        if consumer.is_empty() {
            return Err(call.reject(Rejection::field(
                Reason::FieldRequired,
                "consumer",
                "consumer is required",
            )));
        }
        let position = position_in("position", req.position).map_err(|r| call.reject(r))?;
        let head = self
            .state
            .store
            .feed_head()
            .await
            .map_err(|e| call.fail(e))?;
        if position > head {
            return Err(call.reject(Rejection::field(
                Reason::FeedPositionInvalid,
                "position",
                "position is beyond the feed's head",
            )));
        }
        self.state
            .store
            .commit_consumer(
                &call.caller.client_id,
                &consumer,
                position,
                self.state.now(),
            )
            .await
            .map_err(|e| call.fail(e))?;
        Ok(Response::new(CommitPositionResponse {
            position: req.position,
        }))
    }

    async fn edit_watch_list(
        &self,
        request: Request<tonic::Streaming<WatchListEdit>>,
    ) -> Result<Response<WatchListSummary>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let mut edits = request.into_inner();
        let mut summary = WatchListSummary::default();
        let mut consumer: Option<String> = None;
        while let Some(edit) = edits.message().await? {
            let name = consumer_name(&edit.consumer).map_err(|r| call.reject(r))?;
            if name.is_empty() {
                return Err(call.reject(Rejection::field(
                    Reason::FieldRequired,
                    "consumer",
                    "consumer is required",
                )));
            }
            if consumer.get_or_insert_with(|| name.clone()) != &name {
                return Err(call.reject(Rejection::field(
                    Reason::FieldRequired,
                    "consumer",
                    "one stream edits one consumer's watch list",
                )));
            }
            if edit.add.len() + edit.remove.len() > MAX_WATCH_EDIT {
                return Err(call.reject(Rejection::field(
                    Reason::TextTooLong,
                    "add",
                    format!("at most {MAX_WATCH_EDIT} ids per message"),
                )));
            }
            call.pace(&self.state, edit.add.len() + edit.remove.len())
                .await;
            let parse = |ids: &[String], field: &str| {
                ids.iter()
                    .map(|id| convert::citizen_id(field, id))
                    .collect::<Result<Vec<_>, _>>()
            };
            let add = parse(&edit.add, "add").map_err(|r| call.reject(r))?;
            let remove = parse(&edit.remove, "remove").map_err(|r| call.reject(r))?;
            let (added, removed) = self
                .state
                .store
                .edit_watch_list(&call.caller.client_id, &name, &add, &remove)
                .await
                .map_err(|e| call.fail(e))?;
            summary.added += added;
            summary.removed += removed;
        }
        let Some(name) = consumer else {
            return Ok(Response::new(summary));
        };
        summary.size = self
            .state
            .store
            .watch_list_size(&call.caller.client_id, &name)
            .await
            .map_err(|e| call.fail(e))?;
        summary.consumer = name;
        Ok(Response::new(summary))
    }

    async fn get_position(
        &self,
        request: Request<GetPositionRequest>,
    ) -> Result<Response<GetPositionResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Read)?;
        let consumer = consumer_name(&request.get_ref().consumer).map_err(|r| call.reject(r))?;
        let store = &self.state.store;
        let position = store
            .consumer_position(&call.caller.client_id, &consumer)
            .await
            .map_err(|e| call.fail(e))?;
        let head = store.feed_head().await.map_err(|e| call.fail(e))?;
        let pruned = store
            .feed_pruned_through()
            .await
            .map_err(|e| call.fail(e))?;
        Ok(Response::new(GetPositionResponse {
            position: position.unwrap_or(0).max(0) as u64,
            found: position.is_some(),
            head: head.max(0) as u64,
            earliest: (pruned + 1).max(1) as u64,
        }))
    }

    async fn get_sync_digest(
        &self,
        request: Request<GetSyncDigestRequest>,
    ) -> Result<Response<GetSyncDigestResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Read)?;
        let province = convert::province_code("province_code", &request.get_ref().province_code)
            .map_err(|r| call.reject(r))?;
        let digest = self
            .state
            .store
            .sync_digest(province.as_deref())
            .await
            .map_err(|e| call.fail(e))?
            .ok_or_else(|| {
                call.reject(Rejection::new(
                    Reason::SyncDigestNotReady,
                    "the sync digest is being built; retry shortly",
                ))
            })?;
        Ok(Response::new(GetSyncDigestResponse {
            province_code: province.unwrap_or_default(),
            digest: digest.digest.digest.to_vec(),
            routes: digest.digest.routes.max(0) as u64,
            position: digest.position.max(0) as u64,
            algorithm: crate::domain::digest::ALGORITHM.to_owned(),
        }))
    }
}
