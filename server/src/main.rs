//! `tidepool-server`: parses flags, starts logging, hands over to [`tidepool_server::run`].

use clap::Parser;

/// mimalloc instead of glibc malloc: blocks are allocated and freed at high
/// rates in sizes from bytes to megabytes, where glibc's mmap threshold and heap
/// trimming turn reuse into page faults (seen under 1 MiB SETs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tidepool_server::config::{Args, Config};

fn main() {
    // One line saying what is wrong, whatever RUST_BACKTRACE says: a
    // setting or a taken port is not a crash.
    if let Err(e) = run() {
        eprintln!("tidepool-server: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    use anyhow::Context;
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads())
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.bind.as_str(), config.port))
            .await
            .with_context(|| format!("listening on {}:{}", config.bind, config.port))?;
        tidepool_server::run(listener, config, tidepool_server::shutdown_signal()).await
    })
}
