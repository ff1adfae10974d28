//! The access log's local spool: an answered read's entry is on this instance's disk
//! before the answer leaves, and in the database shortly after.
//!
//! Why: written to the database, each group of reads costs a round trip and a
//! transaction, and the reads wait for both. On two cores that held unary Resolve at
//! concurrency 8 to about 10 k calls/s against 28-30 k with the log off; appended to a
//! local file it did 22.7 k, and the database then takes the entries a whole segment at
//! a time. (An `fdatasync` per group is not cheaper: with `sync` it did 10 k.)
//!
//! How:
//! - Reads are appended to the segment being written (`<number>.spool` in the spool
//!   directory: a JSON line per call, naming the citizens it read) before they are
//!   answered: by the handler itself, or with `sync` by one writer thread that
//!   `fdatasync`s each group of waiting reads (group commit). So an answered read's
//!   entry survives a crash of the registry, and with `sync` a crash of the machine.
//! - Every `ship_every`, the shipper closes the segment (when it holds anything) and
//!   starts the next, then ships every closed segment, oldest first, to
//!   the database in one durable transaction each, and deletes it.
//! - At start, the segments a previous run left (a crash, or a database down at
//!   shutdown) are shipped first. A torn last line (a write cut by a crash: its read was
//!   not answered) is dropped.
//! - Shipping is at least once: a crash between a shipment's commit and its segment's
//!   deletion ships that segment again (its entries twice, with their request ids),
//!   never loses one.
//! - At most `max_bytes` wait unshipped: beyond that (the database down for long)
//!   reads are refused, as when the database log cannot be written. The directory is
//!   locked, so two instances never share a spool, and private to the service's user
//!   (0700, files 0600): it names who read which citizen.

use std::borrow::Cow;
use std::fs::{File, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::access_log::{hand_over, AccessLogUnavailable, Pending, Unmerged};
use super::readiness::Signals;
use crate::domain::citizen_id::CITIZEN_ID_LEN;
use crate::domain::{CitizenId, Timestamp};
use crate::store::{AccessRead, Store};
use crate::telemetry::metrics as m;

/// How the spool runs (the `[access_log]` settings that name a spool directory).
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// `fdatasync` each write before its reads are answered.
    pub sync: bool,
    /// Unshipped bytes at most; beyond, reads are refused.
    pub max_bytes: u64,
    /// How often the segment is closed and shipped.
    pub ship_every: Duration,
    /// Reads waiting to be written at most.
    pub queue: usize,
    /// Entries written by one write at most.
    pub max_batch: usize,
}

/// A running spool. Dropping the last handle ends the shipper (and the writer thread);
/// what is still spooled is shipped by the next start on the same directory.
pub struct Spool {
    /// With `sync`, the writer thread's queue (group commit: one `fdatasync` per group
    /// of waiting reads). Without, each handler appends its own line: a `write` of a
    /// few hundred bytes, cheaper than handing it to another thread and back.
    synced: Option<mpsc::Sender<Pending>>,
    shared: Arc<Shared>,
}

/// What the handlers, the writer thread and the shipper share.
struct Shared {
    dir: PathBuf,
    store: Arc<dyn Store>,
    signals: Arc<Signals>,
    /// What shipping added to the log index's pending list.
    unmerged: Arc<Unmerged>,
    /// The segment being written, locked for each append and for rotation.
    segment: std::sync::Mutex<Segment>,
    /// Bytes written and not yet shipped.
    unshipped: AtomicU64,
    max_bytes: u64,
    /// The segment being written: every lower number is closed.
    current: AtomicU64,
    /// One shipment at a time (the shipper's rounds, `flush`).
    shipping: tokio::sync::Mutex<()>,
    /// The directory's lock, held while the spool runs.
    _lock: File,
}

impl Spool {
    /// Opens the spool in `settings.dir` (created if missing), locks it, starts the
    /// shipper (and with `sync` the writer thread); the shipper's first round ships what
    /// an earlier run left.
    pub(super) fn open(
        settings: &SpoolSettings,
        store: Arc<dyn Store>,
        signals: Arc<Signals>,
        unmerged: Arc<Unmerged>,
    ) -> anyhow::Result<Arc<Spool>> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, Permissions::from_mode(0o700)))
            .with_context(|| format!("creating the access-log spool {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("LOCK"))
            .with_context(|| format!("opening the access-log spool {}", dir.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "the access-log spool {} is in use by another instance: give each its own",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).context(format!("locking the access-log spool {}", dir.display()))
            }
        }
        let mut left = 0;
        let mut last = 0;
        for (number, path) in segments(&dir)? {
            left += std::fs::metadata(&path)?.len();
            last = number;
        }
        let segment = Segment::create(&dir, last + 1)?;
        let shared = Arc::new(Shared {
            dir,
            store,
            signals,
            unmerged,
            current: AtomicU64::new(segment.number),
            segment: std::sync::Mutex::new(segment),
            unshipped: AtomicU64::new(left),
            max_bytes: settings.max_bytes,
            shipping: tokio::sync::Mutex::new(()),
            _lock: lock,
        });
        metrics::gauge!(m::ACCESS_LOG_SPOOL_BYTES).set(left as f64);
        let synced = if settings.sync {
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            let writer = shared.clone();
            let max_batch = settings.max_batch.max(1);
            std::thread::Builder::new()
                .name("access-log-spool".into())
                .spawn(move || write_synced(&writer, rx, max_batch))
                .context("starting the access-log spool's writer")?;
            Some(tx)
        } else {
            None
        };
        let spool = Arc::new(Spool { synced, shared });
        tokio::spawn(ship_rounds(Arc::downgrade(&spool), settings.ship_every));
        Ok(spool)
    }

    /// Records a call's reads; returns once they are written (and with `sync`, synced).
    pub async fn record(&self, read: AccessRead) -> Result<(), AccessLogUnavailable> {
        let Some(tx) = &self.synced else {
            let mut line = Vec::with_capacity(256);
            encode(&mut line, &read);
            return self.shared.append(&line, false, 1);
        };
        hand_over(tx, read).await
    }

    /// Closes the segment being written and ships every closed one: once this returns
    /// `Ok`, every read this instance answered before the call is in the database.
    pub async fn flush(&self) -> Result<(), AccessLogUnavailable> {
        // The writer thread may hold the segment through an `fdatasync`.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.rotate())
            .await
            .map_err(|_| AccessLogUnavailable)?;
        self.shared.ship_closed().await.map_err(|e| {
            tracing::warn!(error = %e, "shipping the access-log spool failed");
            metrics::counter!(m::ACCESS_LOG_SHIP_FAILURES).increment(1);
            AccessLogUnavailable
        })
    }
}

/// The shipper: a flush every `every`, the first at once; ends with the spool.
async fn ship_rounds(spool: Weak<Spool>, every: Duration) {
    loop {
        {
            let Some(spool) = spool.upgrade() else {
                return;
            };
            // A failed round is counted and logged by `flush`; the segments wait for
            // the next round.
            let _ = spool.flush().await;
        }
        tokio::time::sleep(every).await;
    }
}

/// The writer thread (with `sync`): appends and syncs each group of waiting reads as
/// one write, until every handle is gone.
fn write_synced(shared: &Shared, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.read.citizens.len();
        let mut reads = vec![first];
        while count < max_batch {
            let Ok(p) = rx.try_recv() else {
                break;
            };
            count += p.read.citizens.len();
            reads.push(p);
        }
        buf.clear();
        for p in &reads {
            encode(&mut buf, &p.read);
        }
        let outcome = shared.append(&buf, true, reads.len());
        for p in reads {
            let _ = p.done.send(outcome.clone());
        }
    }
}

impl Shared {
    /// Appends whole lines (the entries of `reads` reads) to the segment, synced if
    /// `sync`, unless the spool is full; reports the outcome to readiness and metrics.
    fn append(&self, lines: &[u8], sync: bool, reads: usize) -> Result<(), AccessLogUnavailable> {
        let len = lines.len() as u64;
        let started = Instant::now();
        let result = {
            let mut segment = self.segment.lock().expect("the spool's segment");
            if self.unshipped.load(Ordering::Acquire) + len > self.max_bytes {
                Err(std::io::Error::other(
                    "the spool is full: the database has not taken its entries",
                ))
            } else {
                let written = segment.append(lines, sync);
                // A write cut short is cut back off, so that the next line starts on a
                // line of its own; if even that fails, the next write starts a new
                // segment.
                if written.is_err() && segment.file.set_len(segment.bytes).is_err() {
                    self.next_segment(&mut segment);
                }
                written
            }
        };
        metrics::histogram!(m::ACCESS_LOG_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let left = self.unshipped.fetch_add(len, Ordering::AcqRel) + len;
                metrics::gauge!(m::ACCESS_LOG_SPOOL_BYTES).set(left as f64);
                self.signals.access_log_written();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, reads, "access-log spool write failed");
                metrics::counter!(m::ACCESS_LOG_WRITE_FAILURES).increment(reads as u64);
                self.signals.access_log_failed();
                Err(AccessLogUnavailable)
            }
        }
    }

    /// Closes the segment if it holds anything and starts the next.
    fn rotate(&self) {
        let mut segment = self.segment.lock().expect("the spool's segment");
        if segment.bytes > 0 {
            self.next_segment(&mut segment);
        }
    }

    fn next_segment(&self, segment: &mut Segment) {
        match Segment::create(&self.dir, segment.number + 1) {
            Ok(next) => {
                self.current.store(next.number, Ordering::Release);
                *segment = next;
            }
            Err(e) => tracing::error!(error = %e, "access-log spool: no new segment"),
        }
    }

    /// Ships every closed segment, oldest first, one durable transaction each, and
    /// deletes it. Stops at the first that cannot be shipped.
    async fn ship_closed(&self) -> anyhow::Result<()> {
        let _one = self.shipping.lock().await;
        let current = self.current.load(Ordering::Acquire);
        for (number, path) in segments(&self.dir)? {
            if number >= current {
                break;
            }
            let bytes = tokio::fs::read(&path).await?;
            let (reads, dropped) = decode(&bytes);
            if dropped > 0 {
                tracing::warn!(
                    segment = number,
                    dropped,
                    "access-log spool: lines that could not be read were dropped (a write cut by a crash)"
                );
            }
            if !reads.is_empty() {
                self.store.ship_access_log(&reads).await?;
                self.unmerged.wrote_reads(&reads);
            }
            tokio::fs::remove_file(&path).await?;
            let left = self
                .unshipped
                .fetch_sub(bytes.len() as u64, Ordering::AcqRel)
                .saturating_sub(bytes.len() as u64);
            metrics::gauge!(m::ACCESS_LOG_SPOOL_BYTES).set(left as f64);
        }
        Ok(())
    }
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".spool"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort_unstable_by_key(|(n, _)| *n);
    Ok(found)
}

/// The segment being written.
struct Segment {
    number: u64,
    file: File,
    /// Bytes of whole lines written.
    bytes: u64,
}

impl Segment {
    /// Creates segment `number` and syncs the directory, so that a synced write to the
    /// segment cannot outlive a machine crash without the file that holds it.
    fn create(dir: &Path, number: u64) -> std::io::Result<Segment> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(format!("{number:020}.spool")))?;
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            number,
            file,
            bytes: 0,
        })
    }

    fn append(&mut self, lines: &[u8], sync: bool) -> std::io::Result<()> {
        self.file.write_all(lines)?;
        if sync {
            self.file.sync_data()?;
        }
        self.bytes += lines.len() as u64;
        Ok(())
    }
}

/// One call's reads as a spool line: written from borrowed text (nothing copied on the
/// read's path but the ids, into one string), read back borrowing what needs no unescaping.
///
/// The citizens are `ids`: their 12-digit ids one after another, in one JSON string.
/// Lines written before that named them as a list, `citizens`, which is still read: a
/// spool left by an older version ships after an upgrade. One string instead of a
/// thousand (a BatchResolve batch) halved the cost of reading segments back: under
/// callgrind, the spool's decoding of a 20 k-id BatchResolve took 12.7 M instructions
/// against 25.1 M (the ids' birth years are also judged against one clock read a
/// segment, not one an id). An id that is not 12 bytes (possible only from corrupt
/// stored data) cannot be framed so; a line holding one is written as a list.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    /// Empty in a line of the older form.
    #[serde(default, skip_serializing_if = "str::is_empty", borrow)]
    ids: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    citizens: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    client: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    purpose: Cow<'a, str>,
    at: i64,
    request: Uuid,
}

/// Appends one line per call's read.
fn encode(buf: &mut Vec<u8>, read: &AccessRead) {
    if read.citizens.is_empty() {
        return;
    }
    let framed = read
        .citizens
        .iter()
        .all(|c| c.as_str().len() == CITIZEN_ID_LEN);
    let (ids, citizens) = if framed {
        let mut ids = String::with_capacity(read.citizens.len() * CITIZEN_ID_LEN);
        read.citizens.iter().for_each(|c| ids.push_str(c.as_str()));
        (Cow::Owned(ids), None)
    } else {
        let list = read.citizens.iter().map(|c| Cow::Borrowed(c.as_str()));
        (Cow::Borrowed(""), Some(list.collect()))
    };
    let line = Line {
        ids,
        citizens,
        client: Cow::Borrowed(&read.client_id),
        method: Cow::Borrowed(&read.method),
        purpose: Cow::Borrowed(&read.purpose),
        at: read.accessed_at.micros(),
        request: read.request_id,
    };
    serde_json::to_writer(&mut *buf, &line).expect("a spool line serializes");
    buf.push(b'\n');
}

/// The reads of a segment, in order, and how many lines (or citizen ids in a line) could
/// not be read (a torn last line after a crash).
fn decode(bytes: &[u8]) -> (Vec<AccessRead>, usize) {
    // One clock read for the segment: an id's birth year is judged against it.
    let year = time::OffsetDateTime::now_utc().year();
    let parse = |id: &str| CitizenId::parse_with_year(id, year).ok();
    let mut reads = Vec::new();
    let mut dropped = 0;
    for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(line) = serde_json::from_slice::<Line>(raw) else {
            dropped += 1;
            continue;
        };
        let mut citizens = Vec::with_capacity(line.ids.len() / CITIZEN_ID_LEN);
        for id in line.ids.as_bytes().chunks(CITIZEN_ID_LEN) {
            match std::str::from_utf8(id).ok().and_then(parse) {
                Some(id) => citizens.push(id),
                None => dropped += 1,
            }
        }
        for citizen in line.citizens.iter().flatten() {
            match parse(citizen) {
                Some(id) => citizens.push(id),
                None => dropped += 1,
            }
        }
        if citizens.is_empty() {
            continue;
        }
        reads.push(AccessRead {
            citizens,
            client_id: line.client.into_owned(),
            method: line.method.into_owned(),
            purpose: line.purpose.into_owned(),
            accessed_at: Timestamp(line.at),
            request_id: line.request,
        });
    }
    (reads, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(citizens: &[&str], request: Uuid) -> AccessRead {
        AccessRead {
            citizens: citizens
                .iter()
                .map(|c| CitizenId::parse(c).unwrap())
                .collect(),
            client_id: "payroll".into(),
            method: "Resolve".into(),
            purpose: "pension".into(),
            accessed_at: Timestamp(1_700_000_000_000_000),
            request_id: request,
        }
    }

    #[test]
    fn a_segment_gives_back_its_calls_entries_in_order() {
        let one = Uuid::new_v4();
        let many = Uuid::new_v4();
        let calls = [
            read(&["001085000001"], one),
            read(&["001085000002", "079199000003"], many),
        ];
        let mut buf = Vec::new();
        for call in &calls {
            encode(&mut buf, call);
        }
        let (reads, dropped) = decode(&buf);
        assert_eq!(dropped, 0);
        assert_eq!(reads, calls);
    }

    /// The spool line of a call that read two citizens.
    fn two_citizens() -> Vec<u8> {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &read(&["001085000002", "079199000003"], Uuid::new_v4()),
        );
        buf
    }

    #[test]
    fn a_line_names_its_citizens_in_one_string_of_ids() {
        let buf = two_citizens();
        let line: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(line["ids"], "001085000002079199000003");
        assert!(line.get("citizens").is_none());
    }

    #[test]
    fn a_line_written_before_ids_were_framed_still_ships() {
        // As the previous version wrote it, with a purpose that needed escaping.
        let old = concat!(
            r#"{"citizens":["001085000002","079199000003","12345"],"client":"payroll","#,
            r#""method":"BatchResolve","purpose":"pension \"Q3\"","at":1700000000000000,"#,
            r#""request":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#,
            "\n"
        );
        let (reads, dropped) = decode(old.as_bytes());
        assert_eq!(
            dropped, 1,
            "the id that is not one is counted, the others kept"
        );
        assert_eq!(reads.len(), 1);
        let ids: Vec<&str> = reads[0].citizens.iter().map(CitizenId::as_str).collect();
        assert_eq!(ids, ["001085000002", "079199000003"]);
        assert_eq!(reads[0].purpose, "pension \"Q3\"");
        assert_eq!(reads[0].method, "BatchResolve");
    }

    #[test]
    fn an_id_that_cannot_be_framed_is_written_as_a_list_and_counted_when_read() {
        let mut call = read(&["001085000002"], Uuid::new_v4());
        call.citizens
            .push(CitizenId::from_stored("0010850000".into()));
        let mut buf = Vec::new();
        encode(&mut buf, &call);
        let line: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(line.get("ids").is_none());
        let (reads, dropped) = decode(&buf);
        assert_eq!(dropped, 1);
        assert_eq!(reads[0].citizens, call.citizens[..1]);
    }

    #[test]
    fn a_cut_id_in_a_framed_line_is_counted_and_the_whole_ids_kept() {
        let text = String::from_utf8(two_citizens())
            .unwrap()
            .replace("079199000003", "0791990");
        let (reads, dropped) = decode(text.as_bytes());
        assert_eq!(dropped, 1);
        assert_eq!(reads[0].citizens.len(), 1);
        assert_eq!(reads[0].citizens[0].as_str(), "001085000002");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_whole_lines_kept() {
        let mut buf = Vec::new();
        encode(&mut buf, &read(&["001085000001"], Uuid::new_v4()));
        let whole = buf.len();
        encode(&mut buf, &read(&["001085000002"], Uuid::new_v4()));
        buf.truncate(whole + (buf.len() - whole) / 2);
        let (reads, dropped) = decode(&buf);
        assert_eq!(dropped, 1);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].citizens[0].as_str(), "001085000001");
    }
}
