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

    // A BatchResolve of the 40 citizens probes the model once each: the counters grow by
    // at least a block per citizen (the index's descent), once the database has
    // published its statistics (a backend does when it goes idle, within ten seconds).
    let before = blocks(&body);
    let after = resolve_and_watch(&app, exporter, &citizens, before).await;
    // After the database's statistics are reset (its counts start again from 0), the
    // counters keep counting from where they were: they grow by the new reads, neither
    // held at the old counts nor sent back or forward by the difference.
    // The table's and its index's counts, each kept under its own relation.
    app.db
        .count(
            "SELECT count(pg_stat_reset_single_table_counters(c.oid)) FROM pg_class c \
             WHERE c.oid IN ('resolution_inputs'::regclass, 'resolution_inputs_pkey'::regclass)",
        )
        .await;
    // A scrape sees the counts fall (as Prometheus's next one would: a reset is told
    // from the counts going down, so it must be seen before they pass the old ones).
    let seen = blocks(&scrape(exporter).await);
    assert!(
        seen.0 >= after.0 && seen.1 >= after.1,
        "a counter went down at the reset: {after:?} to {seen:?}"
    );
    let reset = resolve_and_watch(&app, exporter, &citizens, seen).await;
    let grown = (reset.0 + reset.1) - (after.0 + after.1);
    assert!(
        grown < 100.0 * citizens.len() as f64,
        "after a statistics reset the counters grew by {grown} blocks for {} probes",
        citizens.len()
    );
    app.stop().await;
}

/// Resolves `citizens` in one BatchResolve, then scrapes until the model's block counters
/// have grown by at least a block per citizen from `before` (each key descends the
/// index; rows on one page may share a heap read), 20 s at most; answers them then.
/// Neither counter may go down meanwhile.
async fn resolve_and_watch(
    app: &TestApp,
    exporter: std::net::SocketAddr,
    citizens: &[String],
    before: (f64, f64),
) -> (f64, f64) {
    let requests = citizens
        .iter()
        .enumerate()
        .map(|(i, c)| BatchResolveRequest {
            correlation_id: i.to_string(),
            citizen_id: c.clone(),
            ..Default::default()
        })
        .collect();
    let answers = common::batch_resolve_all(app, PAYER, requests).await;
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
        if (after.0 + after.1) - (before.0 + before.1) >= citizens.len() as f64 {
            return after;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the model's block counters did not grow by the BatchResolve's probes: \
             {before:?} to {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
