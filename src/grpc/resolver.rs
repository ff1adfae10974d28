//! `PayoutResolver`: which account does the money go to, for one citizen or for a
//! payroll run of millions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::call::transport_status;
use super::convert::{
    min_position, position_out, record_error, release_in, resolution_out, timestamp_out,
    ResolveRequest,
};
use super::{AppState, Call};
use crate::domain::reservation::{ReserveItem, Reserved};
use crate::domain::{CitizenId, CitizenLookup, LegacyId, Rejection, Resolution};
use crate::proto::payout_resolver_service_server::PayoutResolverService;
use crate::proto::{
    BatchResolveRequest, BatchResolveResponse, ReleaseReservationsRequest,
    ReleaseReservationsResponse, Reservation, ResolveOutcome,
    ResolveRequest as ProtoResolveRequest, ResolveResponse,
};
use crate::security::limits::RpcClass;
use crate::security::Scope;
use crate::store::CacheFill;

const RESOLVE: &str = "/payoutregistry.v1.PayoutResolverService/Resolve";
const BATCH_RESOLVE: &str = "/payoutregistry.v1.PayoutResolverService/BatchResolve";

/// Most requests looked up together (one round trip to the database).
pub const BATCH_SIZE: usize = 1000;

/// How long a batch waits for more requests after its first before it is looked up.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// Batches of answers buffered between the lookup task and the transport, besides the
/// one the transport is taking answers from and the one waiting to be buffered: with the
/// HTTP/2 window, all the memory a slow reader can make the server hold for one stream.
/// That is 3 x [`BATCH_SIZE`] answers, as when 2,000 were buffered one by one beside the
/// batch waiting to be.
///
/// Whole batches, not answers one by one: the channel's send and receive, and the moves
/// of each answer into and out of it, were 4% of the registry's instructions per id of a
/// BatchResolve (callgrind, 20 k ids).
const ANSWER_BATCHES: usize = 1;

pub struct PayoutResolverHandler {
    state: AppState,
}

impl PayoutResolverHandler {
    pub fn new(state: AppState) -> Self {
        PayoutResolverHandler { state }
    }
}

/// One request of a batch, parsed, with the purpose it is read for.
struct Pending {
    request: ResolveRequest,
    /// Shared by the requests of a batch that state the same purpose.
    purpose: Arc<str>,
    /// The request's `min_position` (consistency token).
    min: i64,
}

/// Resolves a batch: legacy numbers through their aliases (one query), every citizen in
/// one lookup, every read recorded in the access log (one commit) before anything is
/// answered. Unknown citizens cost the client extra rate-limit tokens.
async fn resolve_all(
    state: &AppState,
    call: &Call,
    method: &str,
    pending: &[Pending],
) -> Result<(Vec<(Resolution, Option<CitizenId>)>, i64), Status> {
    let legacy: Vec<LegacyId> = pending
        .iter()
        .filter_map(|p| match &p.request.lookup {
            CitizenLookup::Legacy(l) => Some(l.clone()),
            CitizenLookup::Id(_) => None,
        })
        .collect();
    let aliases = if legacy.is_empty() {
        Default::default()
    } else {
        state
            .store
            .citizens_by_legacy_id(&legacy)
            .await
            .map_err(|e| call.fail(e))?
    };
    let citizens: Vec<Option<CitizenId>> = pending
        .iter()
        .map(|p| match &p.request.lookup {
            CitizenLookup::Id(id) => Some(id.clone()),
            CitizenLookup::Legacy(l) => aliases.get(l).cloned(),
        })
        .collect();
    let queries: Vec<_> = pending
        .iter()
        .zip(&citizens)
        .filter_map(|(p, c)| c.clone().map(|c| p.request.query(c)))
        .collect();
    let now = state.now();
    // A batch is read from state at least as fresh as its freshest request asks.
    let min = pending.iter().map(|p| p.min).max().unwrap_or(0);
    // A payroll run's bulk reads do not fill the cache (`CacheFill`).
    let fill = if method == BATCH_RESOLVE {
        CacheFill::ReadOnly
    } else {
        CacheFill::Fill
    };
    let (found, position) = state
        .store
        .resolve_many(&queries, now, min, fill)
        .await
        .map_err(|e| call.fail(e))?;
    let mut found = found.into_iter();
    let mut out = Vec::with_capacity(pending.len());
    let mut unknown = 0usize;
    for citizen in citizens {
        let resolution = match &citizen {
            Some(_) => found.next().unwrap_or(Resolution::UnknownCitizen),
            None => Resolution::UnknownCitizen,
        };
        if resolution == Resolution::UnknownCitizen {
            unknown += 1;
        }
        out.push((resolution, citizen));
    }
    if unknown > 0 {
        // Misses cost more: enumerating citizen ids must be slow and visible.
        let limits = &state.limits;
        limits.charge(
            &call.caller.client_id,
            RpcClass::Resolve,
            limits.unknown_citizen_cost() * unknown as f64,
            Instant::now(),
        );
    }
    // The access log is written per purpose; a batch almost always has one.
    let mut purposes: Vec<&str> = pending.iter().map(|p| &*p.purpose).collect();
    purposes.sort_unstable();
    purposes.dedup();
    for purpose in purposes {
        let read = pending
            .iter()
            .zip(&out)
            .filter(|(p, _)| &*p.purpose == purpose)
            .filter_map(|(_, (_, c))| c.clone());
        call.log_reads(state, method, purpose, read).await?;
    }
    Ok((out, position))
}

fn answer(
    call: &Call,
    request: &ResolveRequest,
    resolution: Resolution,
    reserved: Option<&Reserved>,
    now: crate::domain::Timestamp,
    position: i64,
) -> ResolveResponse {
    let at = request.as_of.unwrap_or(now);
    match reserved {
        // Another payer's: neither who nor where.
        Some(Reserved::Taken) => ResolveResponse {
            outcome: ResolveOutcome::AlreadyReserved.into(),
            as_of: Some(timestamp_out(at)),
            position: position_out(position),
            ..Default::default()
        },
        _ => {
            let mut out = resolution_out(
                resolution,
                request.program.as_ref(),
                at,
                request.exists_only,
                call.caller.has(Scope::ResolveFull),
            );
            if let (
                Some(Reserved::Held {
                    reservation_id,
                    reserved_at,
                }),
                Some(period),
                Some(program),
            ) = (reserved, &request.reservation, &request.program)
            {
                out.reservation = Some(Reservation {
                    reservation_id: reservation_id.to_string(),
                    program_code: program.as_str().to_owned(),
                    period: period.as_str().to_owned(),
                    reserved_at: Some(timestamp_out(*reserved_at)),
                });
            }
            out.position = position_out(position);
            out
        }
    }
}

#[tonic::async_trait]
impl PayoutResolverService for PayoutResolverHandler {
    type BatchResolveStream =
        Pin<Box<dyn Stream<Item = Result<BatchResolveResponse, Status>> + Send>>;

    async fn resolve(
        &self,
        request: Request<ProtoResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Resolve)?;
        let purpose = call.purpose(&request.get_ref().purpose)?;
        let r = request.get_ref();
        let req = ResolveRequest::parse(
            &r.citizen_id,
            &r.program_code,
            r.as_of.as_ref(),
            r.scope,
            &r.reservation_period,
            self.state.now(),
        )
        .and_then(|req| known_program(&self.state, req))
        .map_err(|r| call.reject(r))?;
        let min = min_position(r.min_position).map_err(|r| call.reject(r))?;
        if !req.exists_only {
            // `resolve.exists` clients may only ask yes/no.
            call.require(Scope::Resolve)?;
        }
        let pending = [Pending {
            request: req,
            purpose: purpose.into(),
            min,
        }];
        let now = self.state.now();
        let (resolved, position) = resolve_all(&self.state, &call, RESOLVE, &pending).await?;
        let reserved = reserve_all(&self.state, &call, &pending, &resolved).await?;
        let (resolution, citizen) = resolved
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("no resolution"))?;
        let out = answer(
            &call,
            &pending[0].request,
            resolution,
            reserved[0].as_ref(),
            now,
            position,
        );
        tracing::info!(
            citizen = citizen.as_ref().map(CitizenId::masked).unwrap_or_default(),
            outcome = ResolveOutcome::try_from(out.outcome)
                .map(|o| o.as_str_name())
                .unwrap_or("?"),
            cooling_off = out.cooling_off,
            "resolved"
        );
        Ok(Response::new(out))
    }

    async fn release_reservations(
        &self,
        request: Request<ReleaseReservationsRequest>,
    ) -> Result<Response<ReleaseReservationsResponse>, Status> {
        let call = Call::of(&request)?;
        let _admitted = call.admit(&self.state, RpcClass::Write)?;
        call.require(Scope::Resolve)?;
        let r = request.into_inner();
        let parsed = release_in(&r).and_then(|parsed| {
            if self.state.programs.contains_key(parsed.0.as_str()) {
                Ok(parsed)
            } else {
                Err(Rejection::field(
                    crate::domain::Reason::ProgramUnknown,
                    "program_code",
                    "no such program in the reference data",
                ))
            }
        });
        let (program, period, citizens, reason) = parsed.map_err(|e| call.reject(e))?;
        let released = self
            .state
            .store
            .release_reservations(
                &call.caller.client_id,
                program.as_str(),
                period.as_str(),
                &citizens,
                &reason,
                self.state.now(),
            )
            .await
            .map_err(|e| call.fail(e))?;
        tracing::info!(
            program = program.as_str(),
            period = period.as_str(),
            released,
            "reservations released"
        );
        Ok(Response::new(ReleaseReservationsResponse { released }))
    }

    async fn batch_resolve(
        &self,
        request: Request<Streaming<BatchResolveRequest>>,
    ) -> Result<Response<Self::BatchResolveStream>, Status> {
        let call = Arc::new(Call::of(&request)?);
        let admitted = call.admit_stream(&self.state, RpcClass::Resolve, "BatchResolve")?;
        let state = self.state.clone();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ANSWER_BATCHES);
        tokio::spawn(async move {
            let _admitted = admitted;
            let answered = batch_loop(&state, &call, inbound, &tx).await;
            match answered {
                Ok(n) => tracing::info!(requests = n, "batch resolve finished"),
                Err(status) => {
                    tracing::info!(code = ?status.code(), "batch resolve ended with an error");
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        let answers = ReceiverStream::new(rx).flat_map(|batch| {
            let (answers, end) = match batch {
                Ok(answers) => (answers, None),
                Err(status) => (Vec::new(), Some(status)),
            };
            futures::stream::iter(answers.into_iter().map(Ok).chain(end.map(Err)))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Reads requests in batches, resolves each batch, and sends the answers in request
/// order. Sending waits while the client is not reading, and reading waits on sending:
/// a slow reader slows the whole stream down and memory stays bounded.
async fn batch_loop(
    state: &AppState,
    call: &Arc<Call>,
    inbound: Streaming<BatchResolveRequest>,
    tx: &mpsc::Sender<Result<Vec<BatchResolveResponse>, Status>>,
) -> Result<u64, Status> {
    // Reading and parsing is sequential (the stream's purpose is set by its first
    // request); lookups of consecutive batches overlap; answers keep request order.
    let (batch_tx, batch_rx) = mpsc::channel::<ParsedBatch>(1);
    // Shutting down, the reader stops; what was read is answered, then the stream ends
    // UNAVAILABLE (SHUTTING_DOWN): the client resends the rest elsewhere.
    let mut stop = state.shutting_down.subscribe();
    let reader = async move {
        let mut inbound = inbound;
        let mut stream_purpose: Option<String> = None;
        loop {
            let batch = next_batch(call, &mut inbound, BATCH_SIZE, BATCH_LINGER, &mut stop).await?;
            let ended = batch.records.is_empty();
            if !ended {
                call.pace(state, batch.records.len()).await;
                let parsed = parse_batch(state, call, batch.records, &mut stream_purpose)?;
                if batch_tx.send(parsed).await.is_err() {
                    return Ok(false);
                }
            }
            if batch.stopped {
                return Ok(true);
            }
            if ended {
                return Ok::<bool, Status>(false);
            }
        }
    };
    let writer = async {
        let mut answers = ordered_tasks(batch_rx, LOOKUPS_IN_FLIGHT, |b| {
            let (state, call) = (state.clone(), call.clone());
            async move { answer_batch(&state, &call, b).await }
        });
        let mut answered = 0u64;
        while let Some(batch) = answers.next().await {
            let batch = batch?;
            let n = batch.len() as u64;
            if tx.send(Ok(batch)).await.is_err() {
                // The client went away; nothing more to do.
                return Ok(answered);
            }
            answered += n;
        }
        Ok::<u64, Status>(answered)
    };
    let (read, written) = tokio::join!(reader, writer);
    let answered = written?;
    if read? {
        return Err(super::call::shutting_down(&call.request_id));
    }
    Ok(answered)
}

/// Runs `work` on each item as a task of its own, at most `in_flight` at once, and yields
/// the results in the items' order. A task that panics yields INTERNAL in its place (and
/// is logged); the caller ends the stream there.
///
/// Tasks, not futures of the caller's task, so that the decoding and answering of
/// consecutive batches run on different cores, beside the caller's reading and sending.
/// As futures of one task they took turns on one core: on the 1 M population (two cores,
/// the access log off to see the registry's own path) 161 and 166 k ids/s, against 192 and
/// 194 k as tasks.
fn ordered_tasks<B, T, F, Fut>(
    items: mpsc::Receiver<B>,
    in_flight: usize,
    work: F,
) -> impl Stream<Item = Result<T, Status>>
where
    F: Fn(B) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    ReceiverStream::new(items)
        .map(move |b| tokio::spawn(work(b).in_current_span()))
        .buffered(in_flight)
        .map(|joined| {
            joined.unwrap_or_else(|e| {
                tracing::error!(error = %e, "a batch's lookup task failed");
                Err(Status::internal("a batch's lookup failed"))
            })
        })
}

/// Batches looked up at once on one stream: one batch's lookup overlaps the previous
/// ones' decoding, access-log hand-over and answers. Three rather than two: on the 1 M
/// population (2 cores, runs alternated) 106.5/110.6 k ids/s against 92.9/99.3 k, the
/// machine's idle time otherwise 14%; the server's RSS over a 5 M-id stream stays within
/// 1.16x of a 100 k one's (122.0 against 105.2 MiB).
const LOOKUPS_IN_FLIGHT: usize = 3;

/// A batch of requests, parsed: for each request its slot in `pending` or its refusal.
struct ParsedBatch {
    requests: Vec<BatchResolveRequest>,
    slots: Vec<Result<usize, Rejection>>,
    pending: Vec<Pending>,
}

/// Refuses a program that is not in the reference data, so that a batch answers it in
/// place (the store would refuse the whole lookup), and a reservation for a program whose
/// payments are not reservable.
fn known_program(state: &AppState, request: ResolveRequest) -> Result<ResolveRequest, Rejection> {
    let policy = match &request.program {
        Some(p) => match state.programs.get(p.as_str()) {
            Some(policy) => *policy,
            None => {
                return Err(Rejection::field(
                    crate::domain::Reason::ProgramUnknown,
                    "program_code",
                    "no such program in the reference data",
                ))
            }
        },
        None => None,
    };
    if request.reservation.is_some() && policy.is_none() {
        return Err(Rejection::field(
            crate::domain::Reason::ReservationNotAllowed,
            "reservation_period",
            "payments are reserved per program: name a program whose payments the reference \
             data marks reservable",
        ));
    }
    Ok(request)
}

/// Takes the reservations a batch asks for, for the citizens that can be paid: one store
/// call for the batch. Answers, per pending request, what reserving came to.
async fn reserve_all(
    state: &AppState,
    call: &Call,
    pending: &[Pending],
    resolved: &[(Resolution, Option<CitizenId>)],
) -> Result<Vec<Option<Reserved>>, Status> {
    let mut slots = Vec::with_capacity(pending.len());
    let mut items = Vec::new();
    for (p, (resolution, citizen)) in pending.iter().zip(resolved) {
        let item = match (
            &p.request.reservation,
            &p.request.program,
            citizen,
            resolution,
        ) {
            (Some(period), Some(program), Some(citizen), Resolution::Resolved { .. }) => {
                let scope = state
                    .programs
                    .get(program.as_str())
                    .copied()
                    .flatten()
                    .ok_or_else(|| Status::internal("a reservation for an unreservable program"))?;
                Some(ReserveItem {
                    citizen: citizen.clone(),
                    program_code: program.as_str().to_owned(),
                    period: period.clone(),
                    holder_key: scope.holder_key(&call.caller.client_id),
                })
            }
            _ => None,
        };
        slots.push(item.as_ref().map(|_| items.len()));
        if let Some(item) = item {
            items.push(item);
        }
    }
    if items.is_empty() {
        return Ok(vec![None; pending.len()]);
    }
    let taken = state
        .store
        .reserve(&call.caller.client_id, &items, state.now())
        .await
        .map_err(|e| call.fail(e))?;
    Ok(slots
        .into_iter()
        .map(|slot| slot.map(|i| taken[i].clone()))
        .collect())
}

fn parse_batch(
    state: &AppState,
    call: &Call,
    batch: Vec<BatchResolveRequest>,
    stream_purpose: &mut Option<String>,
) -> Result<ParsedBatch, Status> {
    let mut slots: Vec<Result<usize, Rejection>> = Vec::with_capacity(batch.len());
    let mut pending = Vec::with_capacity(batch.len());
    // One clock read for the batch, not one per request.
    let now = state.now();
    // The last purpose read and what it parsed to: a stream's requests state one purpose
    // (or none, taking the stream's), so it is checked once, not once per request.
    let mut last_purpose: Option<(String, Arc<str>)> = None;
    for r in &batch {
        if stream_purpose.is_none() && !r.purpose.trim().is_empty() {
            *stream_purpose = Some(r.purpose.clone());
        }
        let parsed = ResolveRequest::parse(
            &r.citizen_id,
            &r.program_code,
            r.as_of.as_ref(),
            r.scope,
            &r.reservation_period,
            now,
        )
        .and_then(|request| known_program(state, request))
        .and_then(|request| {
            let raw = if r.purpose.trim().is_empty() {
                stream_purpose.as_deref().unwrap_or("")
            } else {
                &r.purpose
            };
            let purpose = match &last_purpose {
                Some((seen, purpose)) if seen == raw => purpose.clone(),
                _ => {
                    let purpose: Arc<str> = call
                        .purpose(raw)
                        .map_err(|_| {
                            Rejection::field(
                                crate::domain::Reason::PurposeRequired,
                                "purpose",
                                "state why you read these citizens' data: `purpose` on the \
                                 first request or `x-purpose` metadata",
                            )
                        })?
                        .into();
                    last_purpose = Some((raw.to_owned(), purpose.clone()));
                    purpose
                }
            };
            let min = min_position(r.min_position)?;
            Ok(Pending {
                request,
                purpose,
                min,
            })
        });
        match parsed {
            Ok(p) => {
                if !p.request.exists_only {
                    call.require(Scope::Resolve)?;
                }
                slots.push(Ok(pending.len()));
                pending.push(p);
            }
            Err(r) => slots.push(Err(r)),
        }
    }
    Ok(ParsedBatch {
        requests: batch,
        slots,
        pending,
    })
}

/// Looks a parsed batch up and builds its answers, in request order.
async fn answer_batch(
    state: &AppState,
    call: &Call,
    batch: ParsedBatch,
) -> Result<Vec<BatchResolveResponse>, Status> {
    let now = state.now();
    let (resolved, reserved, position) = if batch.pending.is_empty() {
        (Vec::new(), Vec::new(), 0)
    } else {
        let (resolved, position) = resolve_all(state, call, BATCH_RESOLVE, &batch.pending).await?;
        let reserved = reserve_all(state, call, &batch.pending, &resolved).await?;
        (resolved, reserved, position)
    };
    // Each pending request has one slot, so each resolution is answered once: it moves
    // into its answer.
    let mut resolved: Vec<Option<Resolution>> =
        resolved.into_iter().map(|(r, _)| Some(r)).collect();
    let mut answers = Vec::with_capacity(batch.requests.len());
    for (r, slot) in batch.requests.into_iter().zip(batch.slots) {
        answers.push(match slot {
            Ok(i) => {
                let resolution = resolved[i]
                    .take()
                    .ok_or_else(|| Status::internal("a resolution answered twice"))?;
                BatchResolveResponse {
                    correlation_id: r.correlation_id,
                    result: Some(answer(
                        call,
                        &batch.pending[i].request,
                        resolution,
                        reserved[i].as_ref(),
                        now,
                        position,
                    )),
                    error: None,
                }
            }
            Err(rejection) => BatchResolveResponse {
                error: Some(record_error(&r.correlation_id, &rejection)),
                correlation_id: r.correlation_id,
                result: None,
            },
        });
    }
    Ok(answers)
}

/// Waits for the next message, then takes what arrives within `linger`, up to `max`.
/// Empty at the end of the stream. A client that cancels ends the stream with its error;
/// a message that does not decode ends it as the client's fault (see
/// `call::transport_status`). When `stop` turns true (the server shuts down) it stops
/// reading and answers what it holds, with `stopped` set.
pub async fn next_batch<T>(
    call: &Call,
    inbound: &mut Streaming<T>,
    max: usize,
    linger: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<Batch<T>, Status> {
    let decoded = |m: Result<T, Status>| m.map_err(|e| transport_status(e, &call.request_id));
    let mut records = Vec::new();
    // One wait for the stop and one timer for the whole batch, not one of each per
    // message: made anew for each of a BatchResolve's messages, they cost the registry
    // 2% of its instructions per id (callgrind, 20 k ids).
    let stop = stopped(stop);
    tokio::pin!(stop);
    tokio::select! {
        biased;
        _ = &mut stop => return Ok(Batch { records, stopped: true }),
        first = inbound.next() => match first {
            None => return Ok(Batch { records, stopped: false }),
            Some(first) => records.push(decoded(first)?),
        },
    }
    let lingered = tokio::time::sleep(linger);
    tokio::pin!(lingered);
    while records.len() < max {
        // A message that has arrived is taken before the linger is found over.
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(Batch { records, stopped: true }),
            next = inbound.next() => match next {
                Some(next) => records.push(decoded(next)?),
                None => break,
            },
            _ = &mut lingered => break,
        }
    }
    Ok(Batch {
        records,
        stopped: false,
    })
}

/// What [`next_batch`] read.
pub struct Batch<T> {
    pub records: Vec<T>,
    /// The server is shutting down: apply `records`, acknowledge, and end the stream.
    pub stopped: bool,
}

/// Resolves once `stop` is true; never, if its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let sender_gone = stop.wait_for(|s| *s).await.is_err();
    if sender_gone {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup task that panics yields INTERNAL where its answer belongs, after the
    /// answers before it in order, and the process lives on; `batch_loop` ends the stream
    /// at that error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_lookup_is_an_internal_error_in_its_place() {
        let (tx, rx) = mpsc::channel(8);
        for b in [1u32, 2, 3, 4] {
            tx.send(b).await.unwrap();
        }
        drop(tx);
        let answers = ordered_tasks(rx, 3, |b| async move {
            // The first batch finishes last, so order comes from the stream, not timing.
            if b == 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if b == 3 {
                panic!("lookup of batch 3 failed");
            }
            Ok::<u32, Status>(b * 10)
        });
        let got: Vec<Result<u32, Status>> = answers.collect().await;
        let codes: Vec<Result<u32, tonic::Code>> =
            got.into_iter().map(|r| r.map_err(|s| s.code())).collect();
        // batch_loop stops at the error (`?`), so the fourth answer is never sent.
        assert_eq!(
            codes,
            [Ok(10), Ok(20), Err(tonic::Code::Internal), Ok(40)],
            "answers in batch order, the panicked batch's place holds INTERNAL"
        );
    }
}
