//! The `payout-registry` binary: see `payout_registry::cli`.

use clap::Parser;

/// mimalloc instead of the system allocator: a unary Resolve allocates and frees many
/// small buffers across the runtime's threads (HTTP/2 frames, protobuf, the access log's
/// entries), and glibc's malloc took a quarter of the server's CPU under load (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = payout_registry::cli::Cli::parse();
    match payout_registry::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
