//! The resolution read model beside PostgreSQL's buffer cache, as the metrics listener
//! reports it to an operator sizing the database: the model's size, `shared_buffers`,
//! and the model's blocks the database found in that cache or read from outside it
//! (deploy/RUNBOOK.md, PayoutRegistryReadModelOutgrowsCache). PostgreSQL only (SQLite
//! has no buffer cache of its own and exports none of these), so outside the
//! `postgres::`/`sqlite::` pairs that CI counts. Its own test binary: the metrics
//! recorder is the process's, and no other registry here refreshes these gauges.

mod common;

use std::time::{Duration, Instant};

use payout_registry::proto::{BatchResolveRequest, ResolveOutcome};
use payout_registry::telemetry::metrics as m;

use common::{free_addr, link_issuer_confirmed, sample, scrape, Backend, TestApp, PAYER};

/// The model's blocks read so far: (found in the buffer cache, read from outside it).
fn blocks(body: &str) -> (f64, f64) {
    let found = |place| {
        sample(body, m::READ_MODEL_BLOCKS_READ, &[("found", place)]).unwrap_or_else(|| {
            panic!(
                "{} found={place} is not exported:\n{body}",
                m::READ_MODEL_BLOCKS_READ
            )
        })
    };
    (found("cache"), found("outside"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_the_read_model_beside_the_buffer_cache_and_where_its_blocks_were_found() {
    let exporter = free_addr();
    let app = TestApp::builder(Backend::Postgres)
        .configure(move |s| s.metrics_listen = Some(exporter))
        .spawn()
        .await;
    let citizens: Vec<String> = (0..40).map(|i| format!("0010895100{i:02}")).collect();
    for (i, citizen) in citizens.iter().enumerate() {
        link_issuer_confirmed(&app, citizen, &format!("00713000005{i:02}")).await;
    }

    // The sizes are the database's own, as it states them.
    let body = scrape(exporter).await;
    let model = app
        .db
        .count("SELECT pg_total_relation_size('resolution_inputs')")
        .await;
    assert!(model > 0);
    assert_eq!(sample(&body, m::READ_MODEL_BYTES, &[]), Some(model as f64));
    let cache = app
        .db
        .count("SELECT pg_size_bytes(current_setting('shared_buffers'))")
        .await;
    assert_eq!(
        sample(&body, m::DATABASE_BUFFER_CACHE_BYTES, &[]),
        Some(cache as f64)
    );

    // A BatchResolve of the 40 citizens probes the model once each (its index, then the
    // row): the counters grow by at least that many blocks, once the database has
    // published its statistics (a backend does when it goes idle, within ten seconds).
    let before = blocks(&body);
    let requests = citizens
        .iter()
        .enumerate()
        .map(|(i, c)| BatchResolveRequest {
            correlation_id: i.to_string(),
            citizen_id: c.clone(),
            ..Default::default()
        })
        .collect();
    let answers = common::batch_resolve_all(&app, PAYER, requests).await;
    assert_eq!(answers.len(), citizens.len());
    assert!(answers.iter().all(|a| a
        .result
        .as_ref()
        .is_some_and(|r| r.outcome() == ResolveOutcome::Resolved)));
    let asked = Instant::now();
    loop {
        let after = blocks(&scrape(exporter).await);
        assert!(
            after.0 >= before.0 && after.1 >= before.1,
            "a counter went down: {before:?} to {after:?}"
        );
        if (after.0 + after.1) - (before.0 + before.1) >= 2.0 * citizens.len() as f64 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the model's block counters did not grow by the BatchResolve's probes: \
             {before:?} to {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.stop().await;
}
