//! `ChangeFeedService`: every change in commit order, from any position, then live.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::call::shutting_down as shutting_down_status;
use super::convert::{self, consumer_name, feed_position_in as position_in, timestamp_out};
use super::{AppState, Call};
use crate::domain::event::EventType;
use crate::domain::{
    Account, AccountKind, AccountRef, CitizenStatus, PayoutFailureCode, Reason, Rejection,
};
use crate::proto;
use crate::proto::change_feed_service_server::ChangeFeedService;
use crate::proto::feed_event::Payload;
use crate::proto::{
    CommitPositionRequest, CommitPositionResponse, EditWatchListRequest, EditWatchListResponse,
    FeedEvent, GetPositionRequest, GetPositionResponse, GetSyncDigestRequest,
    GetSyncDigestResponse, SubscribeRequest, SubscribeResponse,
};
use crate::security::limits::RpcClass;
use crate::security::Scope;
use crate::store::{Event, StoreResult};

/// Events read per query on the live tail, and the first page of a catch-up.
const PAGE: u32 = 1000;

/// The most events read per query: a subscriber whose pages come back full is behind,
/// and its pages double up to this. Under a bulk load the machine is busy and each query
/// waits its turn for a core: a tail read in pages of `PAGE` fell behind a SyncAccounts
/// load's ~10 k events/s (lag p50 2.3-3.3 s, p99 8 s on 2 cores); growing pages cut that
/// to p50 0.3-0.8 s, p99 1.4-2.3 s. It also bounds what a subscriber holds: this page and
/// the one read ahead.
const PAGE_MAX: u32 = 10_000;

/// Events buffered for a subscriber that reads slowly (then the reader waits).
const BUFFER: usize = 1024;

/// Most ids added or removed per watch-list message.
const MAX_WATCH_EDIT: usize = 10_000;

/// How long a live subscriber waits without a signal before looking anyway.
const SAFETY_TICK: Duration = Duration::from_secs(1);

pub struct ChangeFeedHandler {
    state: AppState,
}

impl ChangeFeedHandler {
    pub fn new(state: AppState) -> Self {
        ChangeFeedHandler { state }
    }
}

/// Which events a subscriber wants.
struct Filter {
    types: HashSet<EventType>,
    programs: HashSet<String>,
}

impl Filter {
    /// The event's type is wanted (checked before the event is converted).
    fn wants_type(&self, e: &Event) -> bool {
        self.types.is_empty()
            || EventType::parse(&e.event_type).is_some_and(|t| self.types.contains(&t))
    }

    /// The event's program is wanted: an event about one program's preference or payout
    /// passes when it is one of the programs asked for. Events not about one program
    /// (an account's or a citizen's status, a failure without a program, a change of
    /// the default preference, which is every program's fallback) always pass.
    fn wants_program(&self, e: &FeedEvent) -> bool {
        let program = match &e.payload {
            Some(Payload::PreferenceChanged(p)) => p.program_code.as_str(),
            Some(Payload::PayoutFailureReported(p)) => p.program_code.as_str(),
            _ => "",
        };
        self.programs.is_empty() || program.is_empty() || self.programs.contains(program)
    }
}

/// A stored event as the API presents it: the payload of its type, typed, with account
/// numbers masked unless `full`, and the holder behind a duplicate claim only for
/// `oversight` (the claimant's side never learns who holds the account). A payload that
/// does not read back (a bug or a hand-edited row) leaves the payload empty rather than
/// stopping the feed; the event's other fields still go out.
pub fn event_out(e: Event, full: bool, oversight: bool) -> FeedEvent {
    let event_type = EventType::parse(&e.event_type);
    let payload = event_type.and_then(|t| payload_out(t, &e.payload, full, oversight));
    if event_type.is_none() || payload.is_none() {
        tracing::error!(position = e.feed_position, event_type = %e.event_type, "an event's payload does not read back");
    }
    FeedEvent {
        position: e.feed_position.unwrap_or_default().max(0) as u64,
        event_id: e.event_id.to_string(),
        occurred_at: Some(timestamp_out(e.occurred_at)),
        event_type: event_type.map(event_type_out).unwrap_or_default().into(),
        citizen_id: e.citizen_id,
        account_id: e.account_id.map(|a| a.to_string()).unwrap_or_default(),
        actor: e.actor,
        reason: e.reason,
        actor_capacity: convert::capacity_out(e.actor_capacity).into(),
        payload,
    }
}

fn event_type_out(t: EventType) -> proto::EventType {
    use proto::EventType as P;
    match t {
        EventType::AccountLinked => P::AccountLinked,
        EventType::AccountVerified => P::AccountVerified,
        EventType::AccountRejected => P::AccountRejected,
        EventType::DefaultChanged => P::DefaultChanged,
        EventType::AccountSuspended => P::AccountSuspended,
        EventType::AccountReinstated => P::AccountReinstated,
        EventType::AccountClosed => P::AccountClosed,
        EventType::CitizenStatusChanged => P::CitizenStatusChanged,
        EventType::DuplicateClaimDetected => P::DuplicateClaimDetected,
        EventType::PayoutFailureReported => P::PayoutFailureReported,
        EventType::DuplicateEntitlementDetected => P::DuplicateEntitlementDetected,
    }
}

/// The filter's event types; unspecified or unknown values are refused.
fn event_types_in(raw: &[i32]) -> Result<HashSet<EventType>, Rejection> {
    raw.iter()
        .map(|&v| {
            proto::EventType::try_from(v)
                .ok()
                .and_then(|t| EventType::parse(t.as_str_name().trim_start_matches("EVENT_TYPE_")))
                .ok_or_else(|| Rejection::unknown_enum_value("event_types"))
        })
        .collect()
}

fn payload_out(t: EventType, stored: &str, full: bool, oversight: bool) -> Option<Payload> {
    use crate::domain::event as stored_as;
    if t.is_account_change() {
        let account: Account = serde_json::from_str(stored).ok()?;
        return Some(Payload::AccountChanged(proto::AccountChanged {
            account: Some(convert::account_out(&account, full)),
        }));
    }
    Some(match t {
        EventType::DefaultChanged => {
            let p: stored_as::PreferenceChanged = serde_json::from_str(stored).ok()?;
            Payload::PreferenceChanged(proto::PreferenceChanged {
                program_code: p.program_code,
                account: Some(convert::account_out(&p.account, full)),
                previous_account_id: p
                    .previous_account_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            })
        }
        EventType::CitizenStatusChanged => {
            let p: stored_as::CitizenStatusChanged = serde_json::from_str(stored).ok()?;
            let status = |s: &str| {
                CitizenStatus::parse(s)
                    .map(convert::citizen_status_out)
                    .unwrap_or_default()
            };
            Payload::CitizenStatusChanged(proto::CitizenStatusChanged {
                previous_status: p
                    .previous_status
                    .as_deref()
                    .map(status)
                    .unwrap_or_default()
                    .into(),
                status: status(&p.status).into(),
                date_of_death: p.died_on.as_deref().and_then(convert::date_out),
                source_version: p.source_version,
                record_id: p.record_id,
            })
        }
        EventType::DuplicateClaimDetected => {
            let p: stored_as::DuplicateClaimDetected = serde_json::from_str(stored).ok()?;
            let kind = AccountKind::parse(&p.kind).ok()?;
            let account_ref = AccountRef::from_stored(p.account_ref);
            Payload::DuplicateClaimDetected(proto::DuplicateClaimDetected {
                claim_id: p.claim_id.to_string(),
                account: Some(convert::account_key_out(
                    kind,
                    &p.provider_code,
                    &account_ref,
                    full,
                )),
                context: p.context,
                holder_citizen_id: if oversight {
                    p.holder_citizen_id
                } else {
                    String::new()
                },
                holder_account_id: if oversight {
                    p.holder_account_id.to_string()
                } else {
                    String::new()
                },
            })
        }
        EventType::DuplicateEntitlementDetected => {
            let p: stored_as::DuplicateEntitlementDetected = serde_json::from_str(stored).ok()?;
            let only_oversight = |id: String| if oversight { id } else { String::new() };
            Payload::DuplicateEntitlementDetected(proto::DuplicateEntitlementDetected {
                entitlement_id: p.entitlement_id.to_string(),
                program_code: p.program_code,
                period: p.period,
                holder_client_id: only_oversight(p.holder),
                claimant_client_id: only_oversight(p.claimant),
            })
        }
        EventType::PayoutFailureReported => {
            let p: stored_as::PayoutFailureReported = serde_json::from_str(stored).ok()?;
            let code = PayoutFailureCode::parse(&p.failure_code).ok()?;
            Payload::PayoutFailureReported(proto::PayoutFailureReported {
                failure_id: p.failure_id.to_string(),
                failure_code: convert::failure_code_out(code).into(),
                program_code: p.program_code,
                payer_reference: p.payer_reference,
                failed_at: p.failed_at.map(timestamp_out),
                account: Some(convert::account_out(&p.account, full)),
            })
        }
        _ => return None,
    })
}

#[tonic::async_trait]
impl ChangeFeedService for ChangeFeedHandler {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = Call::of(&request)?;
        let admitted = call.admit_stream(&self.state, RpcClass::Read, "Subscribe")?;
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
            types: event_types_in(&req.event_types).map_err(|r| call.reject(r))?,
            programs: req.program_codes.into_iter().collect(),
        };
        let full = call.caller.has(Scope::ResolveFull);
        let oversight = call.caller.has(Scope::Oversight);
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
            let mut size = PAGE;
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
                        return Ok((store.feed_after(after, size).await?, None));
                    }
                    // Every position up to the head is visible: once no watched event
                    // remains below it, the next read can start there.
                    let head = store.feed_head().await?;
                    let page = store
                        .feed_after_watched(after, &client, &consumer, size)
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
                    // Resume on another instance after the last position received.
                    let _ = tx.send(Err(shutting_down_status(&call.request_id))).await;
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
                // A full page: behind, so the next pages are larger (a short one: caught up).
                size = if page.len() == size as usize {
                    (size * 2).min(PAGE_MAX)
                } else {
                    PAGE
                };
                if !watched && size > PAGE {
                    if let Some(last) = page.last().and_then(|e| e.feed_position) {
                        let store = store.clone();
                        prefetched =
                            Some(tokio::spawn(
                                async move { store.feed_after(last, size).await },
                            ));
                    }
                }
                for e in page {
                    after = e.feed_position.unwrap_or(after);
                    if !filter.wants_type(&e) {
                        continue;
                    }
                    let e = event_out(e, full, oversight);
                    if filter.wants_program(&e)
                        && tx
                            .send(Ok(SubscribeResponse { event: Some(e) }))
                            .await
                            .is_err()
                    {
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
        request: Request<tonic::Streaming<EditWatchListRequest>>,
    ) -> Result<Response<EditWatchListResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        let mut edits = request.into_inner();
        let mut summary = EditWatchListResponse::default();
        let mut consumer: Option<String> = None;
        while let Some(edit) = edits
            .message()
            .await
            .map_err(|e| super::call::transport_status(e, &call.request_id))?
        {
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
