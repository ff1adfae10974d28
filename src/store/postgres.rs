//! PostgreSQL, the production backend: its connection set-up, the LISTEN task, and its
//! [`Dialect`].
//!
//! Several service instances may share one database, so correctness comes from the
//! database: rows are locked with `FOR UPDATE` (citizen first, then account), and the
//! partial unique index `accounts_one_holder` decides races between claims on one
//! account. Sets of rows and keys are bound as typed arrays, so a bulk statement's text
//! depends only on its column types and is parsed and planned once per connection.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode};
use sqlx::{Arguments, Connection, PgPool, Postgres};

use super::dialect::Dialect;
use super::freshness::{Freshness, Round};
use super::replicas::Replicas;
use super::sql::{columns, Arg, Column, Decoded, Placeholder, Row, Sql, SqlBuilder, Val};
use super::sql_store::{quiet_when_slow, Pools, SqlStore};
use super::{StoreError, StoreOptions, StoreResult};
use crate::domain::CitizenId;

/// The PostgreSQL store: one pool shared by reads and writes.
pub type PgStore = SqlStore<PgDialect>;

/// How long a read waits for a replica's connection before reading the primary.
const REPLICA_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// PostgreSQL's SQL and behaviour.
pub struct PgDialect;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Opens the store: one pool for reads and writes, and the LISTEN task that ticks the
/// store's change signal when any instance sharing the database writes or sequences.
pub async fn connect(url: &str, options: StoreOptions) -> StoreResult<PgStore> {
    let connect = session_options(url, &options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    // Where the access log's connections come from: every transaction on them commits
    // without waiting for the WAL flush (see `ACCESS_LOG_OWN_CONNECTIONS`). The writers
    // hold their connections outside this pool; it only carries the options.
    let log = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(
            (*pool.connect_options())
                .clone()
                .options([("synchronous_commit", "off")]),
        );
    // Two: a merge of the access log's index need not wait for a bulk load's ANALYZE.
    let maintenance = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(quiet_when_slow((*pool.connect_options()).clone()));
    let changed = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let fresh = Freshness::new(options.resolution_cache_entries);
    let listener = tokio::spawn(listen(pool.clone(), changed.clone(), fresh.clone()));
    let mut replicas = Vec::new();
    for url in &options.read_urls {
        let connect = session_options(url, &options).await?;
        let name = format!(
            "{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("")
        );
        // Lazy: a replica down at start-up is only skipped until it answers a poll. A
        // short acquire timeout: a dead replica must not hold reads up.
        let replica = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect);
        replicas.push((name, replica));
    }
    let replicas = Replicas::new(replicas, options.replica_max_lag);
    Ok(SqlStore::new(
        Pools {
            write: pool.clone(),
            read: pool,
            log,
            maintenance,
        },
        options,
        changed,
        fresh,
        replicas,
        Some(listener),
    ))
}

/// Listens for `payout_feed` (events sequenced by any instance: its payload names the
/// round, see `freshness::Round`, which is queued for the feed follower) and ticks
/// `changed`; reconnects after a lost connection. Committed events wake the sequencer in
/// process (`SqlStore::tick`): a writer's NOTIFY would serialize its commit with every
/// other notifying transaction's (migration 0026).
async fn listen(
    pool: PgPool,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    fresh: Arc<Freshness>,
) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen_all(["payout_feed"]).await {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                } else {
                    // A tick after (re)connecting: anything missed meanwhile is read now.
                    changed.send_modify(|n| *n = n.wrapping_add(1));
                    loop {
                        match listener.recv().await {
                            Ok(n) => {
                                if n.channel() == "payout_feed" {
                                    if let Some(round) = Round::parse(n.payload()) {
                                        fresh.queue(round);
                                    }
                                }
                                changed.send_modify(|n| *n = n.wrapping_add(1))
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to LISTEN; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The settings of a transaction that reads or writes many rows by key (one statement:
/// `set_config(..., true)` is `SET LOCAL`): index access only, no JIT, and plans made per
/// `$plan_cache_mode` (see `BULK_PREAMBLE` and `KEY_LOOKUP_PREAMBLE`).
macro_rules! bulk_settings {
    ($plan_cache_mode:literal) => {
        concat!(
            "SELECT set_config('plan_cache_mode', '",
            $plan_cache_mode,
            "', true), set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"
        )
    };
}

/// The options of the registry's own sessions on the server at `url` (the primary's or a
/// replica's): [`connect_options`], named, under the statement timeout.
async fn session_options(url: &str, options: &StoreOptions) -> StoreResult<PgConnectOptions> {
    let mut connect = connect_options(url)
        .await?
        .application_name("payout-registry");
    if let Some(limit) = options.statement_timeout {
        connect = connect.options([("statement_timeout", limit.as_millis().to_string())]);
    }
    Ok(connect)
}

/// The options of a connection to the server at `url`, as the registry and its
/// benchmarks' baselines read it. The URL's `sslmode` (or `PGSSLMODE`) decides. Without
/// one, a server on this machine (a loopback address or `localhost`) is reached in plain
/// text when it accepts that, and any other as sqlx does by default (`prefer`: TLS when
/// the server offers it, unverified).
///
/// Loopback traffic does not leave the machine, so TLS there protects nothing, and it
/// cost: with the server offering TLS, a 200 k-citizen load took 26.6 s on average
/// against 24.6 s in plain text (seven alternated runs each, 2 cores), the registry
/// encrypting every COPY (AES-GCM was 5.3% of the loader's instructions under callgrind)
/// and PostgreSQL decrypting it. A loopback server that refuses plain connections
/// (`hostssl` lines only) is still reached, over TLS: one plain connection is tried first
/// (sqlx reads `sslmode=allow` as `disable`, so that fall-forward is here).
pub async fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)?;
    if !plain_on_loopback(url, &options, std::env::var_os("PGSSLMODE").is_some()) {
        return Ok(options);
    }
    let plain = options.clone().ssl_mode(PgSslMode::Disable);
    match PgConnection::connect_with(&plain).await {
        Ok(probe) => {
            let _ = probe.close().await;
            tracing::info!(
                host = options.get_host(),
                "the database is on this machine and its URL names no sslmode: plain text"
            );
            Ok(plain)
        }
        // Refused without TLS, or not reached at all (a replica down at start-up): the
        // default, which takes TLS where the server offers it and plain text otherwise.
        Err(_) => Ok(options),
    }
}

/// Whether a connection to `url` may go without TLS: its server is on this machine and
/// neither the URL nor the environment (`env_names_mode`: `PGSSLMODE`) names a mode.
fn plain_on_loopback(url: &str, options: &PgConnectOptions, env_names_mode: bool) -> bool {
    let names_mode = url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| matches!(pair.split('=').next(), Some("sslmode" | "ssl-mode")))
    });
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !env_names_mode && !names_mode && loopback
}

impl Dialect for PgDialect {
    type DB = Postgres;

    /// Migrations may rewrite large tables: they run on a connection of their own
    /// without the statement timeout (the later `-c` wins).
    async fn migrate(pool: &PgPool) -> StoreResult<()> {
        let options = (*pool.connect_options())
            .clone()
            .options([("statement_timeout", "0")]);
        let migrations = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let migrated = MIGRATOR.run(&migrations).await;
        migrations.close().await;
        Ok(migrated?)
    }

    fn statement_timeout(ms: u64) -> Option<String> {
        Some(format!("SET LOCAL statement_timeout = {ms}"))
    }

    /// Locks the rows a bulk select returns.
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// The session's last value of the events' sequence: its largest, as a sequence only
    /// grows.
    const LAST_EVENT: &'static str = "SELECT currval(pg_get_serial_sequence('events', 'position'))";

    /// Row locks order PostgreSQL's writers.
    const BEGIN_WRITE: &'static str = "BEGIN";

    /// Every bulk statement looks rows up by key, so it is planned for its actual keys
    /// and for index access: PostgreSQL caches a generic plan for a prepared statement
    /// after five runs, and one made while a table was small (a fresh database filling
    /// up, or statistics not yet analysed) can scan the whole table for a 1,000-key list
    /// for ever after. Planning costs about a millisecond per batch of 1,000. No JIT:
    /// a 1,000-row statement's estimate passes `jit_above_cost`, and compiling it took
    /// about 5% of the CPU of a `demo-data --into-store` load (perf) for key lookups that
    /// run in milliseconds (200 k citizens: 63.2/69.4 s with it, 61.0/67.0 s without).
    /// The three settings are one statement (`set_config(..., true)` is `SET LOCAL`):
    /// one round trip per batch, not three.
    const BULK_PREAMBLE: &'static [&'static str] = &[bulk_settings!("force_custom_plan")];

    /// A batch read of the read model by its primary key alone keeps one plan per
    /// connection: with sequential scans off, the generic plan of `citizen_id = ANY($1)`
    /// is the primary key's index scan whatever the table's size or statistics, so
    /// planning it afresh for each batch's keys (the bulk preamble) bought nothing. That
    /// planning estimated each key of the list: 0.38-0.43 ms of the backend per 1,000
    /// keys on the 1 M population, against 0.10 ms to reuse the plan (`EXPLAIN ANALYZE
    /// EXECUTE`, same session, warm), beside 2.3-3.3 ms to run the lookup.
    const KEY_LOOKUP_PREAMBLE: &'static [&'static str] = &[bulk_settings!("force_generic_plan")];

    /// The access log's writers hold connections of their own (no pool's liveness
    /// round trips around each batch), opened with `synchronous_commit = off`: a batch
    /// commits without waiting for the WAL flush (PostgreSQL flushes within three
    /// `wal_writer_delay`s, 600 ms by default). A crash of the service loses nothing that
    /// was answered; a crash of the database server itself may lose the last fraction of
    /// a second of access-log entries, never registry state. This keeps the log's cost per
    /// read low (README, "Benchmarks").
    const ACCESS_LOG_OWN_CONNECTIONS: bool = true;

    /// PostgreSQL's ANALYZE samples a bounded number of rows (`default_statistics_target`)
    /// and blocks no writer.
    const ANALYZE_PREAMBLE: &'static [&'static str] = &[];

    /// PostgreSQL samples the feed's tables (`ANALYZE` reads a bounded sample, beside the
    /// writers).
    const FEED_STATISTICS_FORGOTTEN: &'static [&'static str] = &[];

    /// `feed_pending` is a queue: each event's row is inserted at one end and deleted from
    /// the other once numbered, leaving a dead row version and index entry behind until a
    /// VACUUM. Until then every plan that estimates a range of `position` walks the dead
    /// entries at the index's low end (`get_actual_variable_range`): with 4 M of them
    /// (autovacuum off, a 1 M-citizen load), planning the sequencer's DELETE took 63 ms
    /// for 1.7 ms of execution. Autovacuum would get there eventually; the sequencer
    /// does not leave its latency to it. A long VACUUM outlasts the call timeout.
    const VACUUM_QUEUE: &'static [&'static str] =
        &["SET statement_timeout = 0", "VACUUM feed_pending"];

    /// Every statement of the transaction sees the snapshot of its first.
    const SNAPSHOT_READ: &'static [&'static str] =
        &["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"];

    /// `citizen_keys` since migration 0017, `citizen_ids` before it: each through its
    /// GIN index.
    const LOG_NAMES_CITIZEN: &'static str =
        "(citizen_keys IS NOT NULL AND citizen_keys @> ARRAY[$1::bigint] \
         OR citizen_ids IS NOT NULL AND citizen_ids @> ARRAY[$1::text])";

    /// The citizens as numbers (`CitizenId::number`, migration 0017).
    const LOG_CITIZENS_COLUMN: &'static str = "citizen_keys";

    const ACCESS_LOG_TERMS: bool = false;

    /// The GIN index keeps new entries in its pending list (migrations 0015, 0017);
    /// merged here in bulk, not by the log writer whose row would overflow the list. The
    /// index of the text ids (before 0017) gets no new entries, but may hold a list
    /// written before the upgrade: merging an empty list costs one page read.
    const ACCESS_LOG_INDEX_CLEANUP: Option<&'static str> = Some(
        "SELECT gin_clean_pending_list('access_log_by_citizen_key') \
         + gin_clean_pending_list('access_log_by_citizen_in_batch')",
    );

    /// The table and its index (the toast of rows over 2 kB too: none in practice), the
    /// configured shared_buffers, and the cumulative statistics' block counts of both.
    const MODEL_CACHE_GAUGES: Option<&'static str> = Some(
        "SELECT pg_total_relation_size(s.relid), \
         pg_size_bytes(current_setting('shared_buffers')), \
         s.heap_blks_hit + COALESCE(s.idx_blks_hit, 0), \
         s.heap_blks_read + COALESCE(s.idx_blks_read, 0) \
         FROM pg_statio_all_tables s WHERE s.relid = 'resolution_inputs'::regclass",
    );

    /// The sequencer reads one snapshot for the events it numbers and the state the sync
    /// digest is computed from, so the digest describes exactly the feed up to its
    /// position. A sequencer that took its snapshot before another instance's round
    /// committed gets a serialization failure on the head row and starts again.
    const SEQUENCER_ISOLATION: &'static [&'static str] =
        &["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"];

    /// Wakes every instance (delivered at commit), naming the round.
    const FEED_ADVANCED: Option<&'static str> = Some("SELECT pg_notify('payout_feed', $1)");

    /// Arrays: one statement for any number of rows.
    const BINDS_PER_STATEMENT: Option<usize> = None;

    /// `$n`: PostgreSQL's only kind.
    const PLACEHOLDER: Placeholder = Placeholder::Numbered;

    /// One array per column, unnested, so the statement text depends only on the column
    /// types (parsed and planned once per connection).
    fn push_relation(q: &mut SqlBuilder, rows: Vec<Row>) -> StoreResult<()> {
        let cols =
            columns(rows).ok_or_else(|| StoreError::Corrupt("rows of mixed shapes".into()))?;
        q.push("SELECT * FROM UNNEST(");
        for (i, col) in cols.into_iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            push_array(q, col);
        }
        q.push(")");
        Ok(())
    }

    /// An `int8[]` parameter: each id's number.
    fn push_citizens(q: &mut SqlBuilder, citizens: &[&CitizenId]) -> StoreResult<()> {
        let numbers = citizens
            .iter()
            .map(|c| match c.number() {
                Some(n) => Ok(Some(n)),
                None => Err(StoreError::Corrupt(
                    "a citizen id that is not 12 digits".into(),
                )),
            })
            .collect::<StoreResult<Vec<Option<i64>>>>()?;
        push_array(q, Column::Int(numbers));
        Ok(())
    }

    /// ` = ANY($n)`: one array parameter, whatever the number of keys (` = $n` for one
    /// key).
    fn push_in(q: &mut SqlBuilder, mut keys: Vec<Val>) -> StoreResult<()> {
        if keys.len() == 1 {
            // One key (unary Resolve): plain equality, whose generic plan PostgreSQL
            // caches; `= ANY` of a one-element array would be re-planned on every call.
            let key = keys.pop().expect("one key");
            q.push(" = ").push_bind(key);
            return Ok(());
        }
        match Column::of(keys) {
            Some(col) => {
                q.push(" = ANY(");
                push_array(q, col);
                q.push(")");
            }
            None => {
                q.push(" IN (NULL)");
            }
        }
        Ok(())
    }

    fn push_probes(
        q: &mut SqlBuilder,
        table: &str,
        filter: impl FnOnce(&mut SqlBuilder),
        column: &str,
        keys: Vec<Val>,
    ) -> StoreResult<()> {
        if keys.is_empty() {
            q.push(&format!(" FROM {table} WHERE false"));
            return Ok(());
        }
        let col = Column::of(keys)
            .ok_or_else(|| StoreError::Corrupt("probe keys of mixed types".into()))?;
        q.push(" FROM UNNEST(");
        push_array(q, col);
        q.push(&format!(
            ") AS probe(key) CROSS JOIN LATERAL (SELECT * FROM {table} WHERE "
        ));
        filter(q);
        // OFFSET 0 keeps the planner from pulling the subquery up into a join it may
        // then turn around (the prefix scanned once per key).
        q.push(&format!(" AND {column} = probe.key OFFSET 0) AS probed"));
        Ok(())
    }

    async fn execute(conn: &mut PgConnection, sql: Sql) -> StoreResult<u64> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_with(&text, args)
            .execute(conn)
            .await?
            .rows_affected())
    }

    /// Binary COPY: no statement to parse or plan and no executor per row, the rows
    /// already in PostgreSQL's own binary forms (see `binary_copy`). A few rows (a single
    /// write's) go in one prepared INSERT instead: COPY costs a round trip more to start.
    async fn append(conn: &mut PgConnection, target: &str, rows: Vec<Row>) -> StoreResult<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        if rows.len() <= FEW_ROWS {
            let mut q = Self::builder(&format!("INSERT INTO {target} "));
            Self::push_relation(&mut q, rows)?;
            return Self::execute(conn, q.build()).await;
        }
        let data = binary_copy(&rows)?;
        let mut copy = conn
            .copy_in_raw(&format!("COPY {target} FROM STDIN (FORMAT binary)"))
            .await?;
        copy.send(data).await?;
        Ok(copy.finish().await?)
    }

    async fn fetch_all<R: Decoded>(conn: &mut PgConnection, sql: Sql) -> StoreResult<Vec<R>> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_all(conn)
            .await?)
    }

    async fn fetch_optional<R: Decoded>(
        conn: &mut PgConnection,
        sql: Sql,
    ) -> StoreResult<Option<R>> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_optional(conn)
            .await?)
    }

    async fn fetch_one<R: Decoded>(conn: &mut PgConnection, sql: Sql) -> StoreResult<R> {
        let (text, args) = sql.into_parts();
        let args = arguments(args)?;
        Ok(sqlx::query_as_with::<_, R, _>(&text, args)
            .fetch_one(conn)
            .await?)
    }
}

/// Up to this many rows are appended by INSERT rather than COPY.
const FEW_ROWS: usize = 8;

/// `rows` in PostgreSQL's binary COPY format: the signature, flags (none) and an empty
/// header extension; each row as its field count, then each field as its length in
/// bytes (-1: NULL) and its value in the type's binary form (text: its UTF-8 bytes;
/// int8: 8 bytes big-endian; uuid: its 16 bytes; bytea: its bytes); then the trailer,
/// -1. Every column appended to is `text`, `bigint`, `uuid` or `bytea`, which [`Val`]'s
/// four kinds match exactly.
fn binary_copy(rows: &[Row]) -> StoreResult<Vec<u8>> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let mut out = Vec::with_capacity(19 + rows.len() * 256);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in rows {
        let fields = i16::try_from(row.0.len())
            .map_err(|_| StoreError::Corrupt("a row too wide for COPY".into()))?;
        out.extend_from_slice(&fields.to_be_bytes());
        for v in &row.0 {
            match v {
                Val::Text(Some(t)) => copy_field(&mut out, t.as_bytes())?,
                Val::Int(Some(i)) => copy_field(&mut out, &i.to_be_bytes())?,
                Val::Uuid(Some(u)) => copy_field(&mut out, u.as_bytes())?,
                Val::Bytes(Some(b)) => copy_field(&mut out, b)?,
                Val::Text(None) | Val::Int(None) | Val::Uuid(None) | Val::Bytes(None) => {
                    out.extend_from_slice(&(-1i32).to_be_bytes())
                }
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

/// One field of a binary COPY row: its length, then its bytes.
fn copy_field(out: &mut Vec<u8>, bytes: &[u8]) -> StoreResult<()> {
    let len = i32::try_from(bytes.len())
        .map_err(|_| StoreError::Corrupt("a value too large for COPY".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Binds one column as a typed array.
fn push_array(q: &mut SqlBuilder, col: Column) {
    let cast = match col {
        Column::Text(_) => "::text[]",
        Column::Int(_) => "::int8[]",
        Column::Uuid(_) => "::uuid[]",
        Column::Bytes(_) => "::bytea[]",
    };
    q.push_bind(col).push(cast);
}

/// Encodes a statement's arguments.
fn arguments(args: Vec<Arg>) -> Result<PgArguments, sqlx::Error> {
    let mut out = PgArguments::default();
    for arg in args {
        match arg {
            Arg::Text(v) => out.add(v),
            Arg::Int(v) => out.add(v),
            Arg::Uuid(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Bytes(v) => out.add(v),
            Arg::Array(Column::Text(v)) => out.add(v),
            Arg::Array(Column::Int(v)) => out.add(v),
            Arg::Array(Column::Uuid(v)) => out.add(v),
            Arg::Array(Column::Bytes(v)) => out.add(v),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_frames_each_row_as_postgresql_reads_it() {
        let id = uuid::Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let rows = [Row(vec![
            Val::Text(Some("Lê".into())),
            Val::Int(Some(-2)),
            Val::Uuid(Some(id)),
            Val::Bytes(Some(vec![1, 0, 0xff])),
            Val::Text(None),
            Val::Bytes(None),
        ])];
        let data = binary_copy(&rows).unwrap();
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, header extension
        want.extend([0, 6]); // six fields
        want.extend([0, 0, 0, 3, b'L', 0xc3, 0xaa]); // "Lê": three UTF-8 bytes
        want.extend([0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.extend([0, 0, 0, 16]);
        want.extend(1u8..=16);
        want.extend([0, 0, 0, 3, 1, 0, 0xff]); // bytea: its bytes as they are
        want.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        want.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        want.extend([0xff, 0xff]); // trailer
        assert_eq!(data, want);
    }

    #[test]
    fn only_a_server_on_this_machine_without_a_named_sslmode_may_go_without_tls() {
        let plain = |url: &str, env: bool| {
            plain_on_loopback(url, &PgConnectOptions::from_str(url).unwrap(), env)
        };
        assert!(plain("postgres://postgres@127.0.0.1:5432/registry", false));
        assert!(plain("postgres://registry@localhost/registry", false));
        assert!(plain("postgres://registry@[::1]:5432/registry", false));
        assert!(plain(
            "postgres://registry@127.0.0.2/registry?application_name=x",
            false
        ));
        // A mode named in the URL, either spelling, or in PGSSLMODE, is kept.
        assert!(!plain(
            "postgres://registry@127.0.0.1/registry?sslmode=prefer",
            false
        ));
        assert!(!plain(
            "postgres://registry@127.0.0.1/registry?x=1&ssl-mode=require",
            false
        ));
        assert!(!plain("postgres://registry@127.0.0.1/registry", true));
        // Another machine's server keeps sqlx's default.
        assert!(!plain("postgres://registry@db.example/registry", false));
        assert!(!plain("postgres://registry@10.0.0.7:5432/registry", false));
    }
}
