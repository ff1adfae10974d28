//! `demo-data` and `import`: populations in bulk (`crate::tools::demo` and
//! `crate::tools::import` do the work).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Connection;
use crate::config::Settings;

/// `demo-data`: a synthetic population as CSV files, or straight into the store.
pub async fn demo_data(
    config: Option<&Path>,
    citizens: u64,
    seed: u64,
    out: Option<PathBuf>,
    into_store: bool,
    in_flight: usize,
) -> anyhow::Result<()> {
    let spec = crate::tools::demo::DemoSpec { citizens, seed };
    let started = std::time::Instant::now();
    if into_store {
        let settings = Settings::load(config)?;
        let store = crate::app::open_store(&settings).await?;
        let (c, a) = crate::tools::import::demo_store(store, &spec, in_flight).await?;
        println!(
            "citizens: {} applied, {} stale, {} rejected\naccounts: {} applied, {} stale, {} \
             rejected (the planted duplicate claims, and NAME_MATCH records whose holder name \
             is not the registered one)\n{:.1} s",
            c.applied,
            c.stale,
            c.rejected,
            a.applied,
            a.stale,
            a.rejected,
            started.elapsed().as_secs_f64()
        );
    } else if let Some(dir) = out {
        let (c, a) = crate::tools::import::demo_csv(&spec, &dir)?;
        println!(
            "wrote {} and {} in {:.1} s",
            c.display(),
            a.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `import`: streams CSV files to a running registry, resuming after an interruption.
pub async fn import(
    conn: Connection,
    citizens: Option<PathBuf>,
    accounts: Option<PathBuf>,
    max_records: Option<u64>,
) -> anyhow::Result<()> {
    if citizens.is_none() && accounts.is_none() {
        anyhow::bail!("nothing to import: give --citizens and/or --accounts");
    }
    let (channel, credentials) = crate::client::connect(&conn.endpoint()).await?;
    let credentials = credentials.for_streams();
    let files = [
        (crate::tools::import::FileKind::Citizens, citizens),
        (crate::tools::import::FileKind::Accounts, accounts),
    ];
    for (kind, path) in files {
        let Some(path) = path else { continue };
        let started = std::time::Instant::now();
        let r = crate::tools::import::import_file(
            channel.clone(),
            credentials.clone(),
            kind,
            &path,
            max_records,
        )
        .await
        .with_context(|| {
            format!(
                "importing {} (run the same command again to resume)",
                path.display()
            )
        })?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {} records committed in {secs:.1} s ({:.0}/s){}: {} applied, {} stale, {} \
             rejected, {} malformed lines{}",
            path.display(),
            r.committed,
            r.committed as f64 / secs.max(1e-9),
            if r.resumed_after_line > 0 {
                format!(", resumed after line {}", r.resumed_after_line)
            } else {
                String::new()
            },
            r.applied,
            r.stale,
            r.rejected,
            r.malformed,
            if r.complete {
                String::new()
            } else {
                format!(
                    "; not finished, run again to resume ({})",
                    crate::tools::import::checkpoint_path(&path).display()
                )
            }
        );
        if r.rejected > 0 {
            println!(
                "  rejected records are listed in {}.rejected.csv",
                path.display()
            );
        }
    }
    Ok(())
}
