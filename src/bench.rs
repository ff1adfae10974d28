//! The load generator: drives a running registry over real gRPC and prints figures.
//!
//! Benchmarks are not tests: they print throughput and latency percentiles for a human
//! to compare (README, "Benchmarks"). Each scenario runs for a fixed time or count, bounded,
//! against the address it is given (loopback in every documented recipe).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::proto;
use crate::proto::account_registry_client::AccountRegistryClient;
use crate::proto::payout_resolver_client::PayoutResolverClient;
use tonic_health::pb::health_client::HealthClient;

/// What one run measured.
pub struct Figures {
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Figures {
    pub fn print(&self, scenario: &str, concurrency: usize) {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{scenario}: concurrency {concurrency}, {} calls, {} errors in {:.1} s: {:.0} calls/s; \
             latency ms p50 {:.2} p95 {:.2} p99 {:.2}",
            self.calls,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.calls as f64 / self.elapsed.as_secs_f64(),
            us(0.50),
            us(0.95),
            us(0.99),
        );
    }
}

/// Links and verifies `n` synthetic citizens' accounts through the API, returning their
/// ids (Hà Nội, born 1985, serials from `first_serial`).
pub async fn seed(
    registry: &mut AccountRegistryClient<tonic::transport::Channel>,
    token: &str,
    n: usize,
    first_serial: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let citizen = format!("001085{:06}", first_serial + i);
        let mut request = tonic::Request::new(proto::LinkAccountRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            citizen_id: citizen.clone(),
            kind: proto::AccountKind::BankAccount.into(),
            provider_code: "970418".into(),
            account_ref: format!("21{:010}", first_serial + i),
            verification: Some(proto::Verification {
                method: proto::VerificationMethod::IssuerConfirmed.into(),
                evidence_ref: "bench".into(),
                ..Default::default()
            }),
            reason: "benchmark seed".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        match registry.link_account(request).await {
            Ok(_) => {}
            // Already seeded by an earlier run: fine.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(anyhow::anyhow!("seeding failed: {s}")),
        }
        ids.push(citizen);
    }
    Ok(ids)
}

/// Unary Resolve of random ids from `ids`, `concurrency` calls in flight, for `duration`.
pub async fn resolve(
    channel: tonic::transport::Channel,
    token: &str,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    run(concurrency, duration, move |i| {
        let mut client = PayoutResolverClient::new(channel.clone());
        let citizen = ids[i % ids.len()].clone();
        let auth = auth.clone();
        async move {
            let mut request = tonic::Request::new(proto::ResolveRequest {
                citizen_id: citizen,
                purpose: "benchmark".into(),
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", auth);
            client.resolve(request).await.map(|_| ())
        }
    })
    .await
}

/// grpc.health.v1 Health/Check: the transport's ceiling on this machine.
pub async fn health(
    channel: tonic::transport::Channel,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    run(concurrency, duration, move |_| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    })
    .await
}

/// Runs `call` from `concurrency` workers until `duration` has passed.
async fn run<F, Fut>(concurrency: usize, duration: Duration, call: F) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let total = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (call, total, errors) = (call.clone(), total.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut i = w * 7919;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(i).await.is_err() {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = local.record(t.elapsed().as_micros() as u64);
                i += 1;
            }
            let _ = total.lock().await.add(&local);
        }));
    }
    for w in workers {
        w.await?;
    }
    let latency = Arc::try_unwrap(total)
        .map_err(|_| anyhow::anyhow!("workers still hold the histogram"))?
        .into_inner();
    Ok(Figures {
        calls: latency.len(),
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency,
    })
}
