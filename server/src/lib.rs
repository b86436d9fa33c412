//! tidepool-server: the node.
//!
//! It owns the RESP listener and connections ([`conn`]), applying commands to the
//! block store ([`cmd`]), settings ([`config`]), pub/sub and the block event
//! stream ([`pubsub`]), the client registry and server counters ([`state`]).
//! Later: auth, cluster membership (etcd) and the data plane's control side.

pub mod cluster;
pub mod cmd;
pub mod config;
pub mod conn;
pub mod data;
pub mod errors;
pub mod fanout;
pub mod handover;
pub mod info;
pub mod observe;
pub mod pubsub;
pub mod session;
pub mod state;
pub mod zmq_events;

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::Config;
pub use state::Shared;

/// How often expired blocks and leases are swept (lazy expiry catches the rest).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Serves clients on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut config = config;
    fit_maxclients(&mut config)?;
    let shared = Shared::new(config)?;
    info!(
        addr = %listener.local_addr()?,
        dram = %shared.config.read().dram,
        "tidepool-server ready to accept connections"
    );
    let planes = start_data_plane(&shared, listener.local_addr()?.port()).await?;
    if let Some(z) = &shared.zmq {
        let (endpoint, topic, block_size) = {
            let c = shared.config.read();
            let endpoint = c.kv_events_zmq.clone().unwrap_or_default();
            (endpoint, c.kv_events_topic.clone(), c.kv_events_block_size)
        };
        z.start(&endpoint, &topic, block_size).await?;
    }
    let addr = {
        let c = shared.config.read();
        c.announce.clone().unwrap_or_else(|| {
            format!(
                "{}:{}",
                c.bind,
                listener.local_addr().map_or(0, |a| a.port())
            )
        })
    };
    let _ = shared.addr.set(addr);
    // Cluster mode: registered in etcd before the first request is served.
    if let Some(c) = cluster::Cluster::join(&shared).await? {
        info!(id = %c.me.id, addr = %c.me.addr, "joined the cluster");
        let _ = shared.cluster.set(c);
        tokio::spawn(handover::follow(shared.clone()));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // Expiry and lease sweeps run on a thread of their own: a sweep that
    // removes a long chain (a TTL on its root) takes as long as the chain
    // is, and must not hold up a runtime worker's connections meanwhile.
    let (sweep_stop, sweep_rx) = std::sync::mpsc::channel::<()>();
    let sweeper = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("tidepool-sweep".into())
            .spawn(move || {
                let mut failures_seen = 0;
                // INFO's instantaneous_ops_per_sec: commands over the last
                // 16 sweeps, as Redis samples them.
                let mut ops = std::collections::VecDeque::with_capacity(17);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    sweep_rx.recv_timeout(SWEEP_INTERVAL)
                {
                    shared.store.expire_due();
                    shared.data.sweep(&shared.store);
                    failures_seen = report_checksum_failures(&shared, failures_seen);
                    ops.push_back((
                        std::time::Instant::now(),
                        shared.stats.commands.load(Relaxed),
                    ));
                    if ops.len() > 16 {
                        ops.pop_front();
                    }
                    if let (Some((t0, n0)), Some((t1, n1))) = (ops.front(), ops.back()) {
                        let secs = t1.duration_since(*t0).as_secs_f64();
                        if secs > 0.0 {
                            let rate = n1.saturating_sub(*n0) as f64 / secs;
                            shared.ops_per_sec.store(rate.round() as u64, Relaxed);
                        }
                    }
                }
            })?
    };
    tokio::pin!(shutdown);
    // Failed accepts (out of descriptors) are logged once a second at most.
    let (mut failed, mut logged) = (0u64, None::<std::time::Instant>);
    // In cluster mode a stop first hands this node's blocks over, serving
    // (and accepting) meanwhile.
    let mut leaving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let stopping = leaving.is_none();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let shared = shared.clone();
                    let stop = stop_rx.clone();
                    tokio::spawn(async move {
                        conn::serve(shared, socket, peer, stop).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    failed += 1;
                    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        warn!(error = %e, failed, "accept failed");
                        (failed, logged) = (0, Some(std::time::Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut shutdown, if stopping => match shared.cluster.get() {
                Some(_) => leaving = Some(tokio::spawn(handover::leave(shared.clone()))),
                None => break,
            },
            _ = shared.shutdown.notified(), if stopping => match shared.cluster.get() {
                Some(_) => leaving = Some(tokio::spawn(handover::leave(shared.clone()))),
                None => break,
            },
            _ = async { leaving.as_mut().expect("guarded").await }, if !stopping => break,
        }
    }
    info!("shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    drop(sweep_stop);
    let _ = tokio::task::spawn_blocking(move || sweeper.join()).await;
    for task in planes {
        task.abort();
    }
    if let Some(path) = shared.data.shm_path.get() {
        let _ = std::fs::remove_file(path);
    }
    // Give connections a moment to flush and close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while shared.clients.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    info!("bye");
    Ok(())
}

/// Descriptors kept for the server's own files (listeners, the arena, the
/// SSD tier, the shm socket, logs), as Redis keeps 32.
pub const RESERVED_FDS: u64 = 32;

/// Descriptors `maxclients` needs: its connections and the server's own,
/// as Redis counts them. (Data-port connections come on top, bounded by
/// maxclients too; a failed accept there is retried and logged once a
/// second at most.)
pub fn fds_for(maxclients: usize) -> u64 {
    maxclients as u64 + RESERVED_FDS
}

/// The process's descriptor limit (soft, hard).
pub fn fd_limit() -> Option<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall filling `l`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0)
        .then_some((l.rlim_cur, l.rlim_max))
}

/// Makes `maxclients` fit the descriptor limit, as Redis does: the soft
/// limit is raised as far as the hard one allows, and if that is still too
/// few, maxclients is lowered to fit and the server says so, once. (Kept at
/// 10,000 under a limit of 256, it accepted connections until `accept`
/// failed, and logged a hundred warnings a second.)
fn fit_maxclients(config: &mut Config) -> anyhow::Result<()> {
    let want = fds_for(config.maxclients);
    let Some((soft, hard)) = fd_limit() else {
        return Ok(());
    };
    if soft >= want {
        return Ok(());
    }
    let raised = want.min(hard);
    if raised > soft {
        let l = libc::rlimit {
            rlim_cur: raised,
            rlim_max: hard,
        };
        // SAFETY: a plain syscall reading `l`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return fit_to(config, soft);
        }
    }
    if raised < want {
        return fit_to(config, raised);
    }
    info!(
        from = soft,
        to = raised,
        "raised the open-file limit for maxclients"
    );
    Ok(())
}

fn fit_to(config: &mut Config, limit: u64) -> anyhow::Result<()> {
    let fit = limit.saturating_sub(RESERVED_FDS);
    anyhow::ensure!(
        fit > 0,
        "the open-file limit ({limit}) leaves no descriptor for clients: raise it (ulimit -n)"
    );
    warn!(
        "maxclients {} needs {} open files, but the limit is {limit} (ulimit -n): maxclients is {fit}",
        config.maxclients,
        fds_for(config.maxclients)
    );
    config.maxclients = fit as usize;
    Ok(())
}

/// Binds the TCP data port and the shm socket and starts serving them.
async fn start_data_plane(
    shared: &Arc<Shared>,
    resp_port: u16,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use anyhow::Context;
    let (bind, wanted, shm, socket, perm) = {
        let c = shared.config.read();
        let perm = crate::config::parse_perm(&c.shm_socket_perm)?;
        (
            c.bind.clone(),
            c.data_port,
            c.shm,
            c.shm_socket.clone(),
            perm,
        )
    };
    let data = match wanted {
        Some(port) => TcpListener::bind((bind.as_str(), port))
            .await
            .with_context(|| format!("binding the data port {bind}:{port}"))?,
        None => {
            let port = resp_port.checked_add(10_000).unwrap_or(0);
            match TcpListener::bind((bind.as_str(), port)).await {
                Ok(l) => l,
                Err(e) => {
                    warn!("data port {port} unavailable ({e}); taking any free port");
                    TcpListener::bind((bind.as_str(), 0)).await?
                }
            }
        }
    };
    let addr = data.local_addr()?;
    let _ = shared.data.tcp_addr.set(addr);
    // The data port takes as many connections as the RESP port (read at
    // start: CONFIG SET maxclients later applies to the RESP port only).
    let data_max = shared.config.read().maxclients;
    let mut tasks = vec![tokio::spawn(tidepool_transport::tcp::serve(
        data,
        shared.data.clone() as Arc<dyn tidepool_transport::tcp::Resolver>,
        data_max,
    ))];
    #[cfg(feature = "rdma")]
    if let Some(arena) = shared.data.arena.clone() {
        let state = match tidepool_transport::rdma::RdmaServer::start(addr, arena) {
            Ok(server) => {
                let remote = server.remote().encode();
                // The listener lives as long as the process.
                std::mem::forget(server);
                Ok(remote)
            }
            Err(e) => {
                info!("rdma off: {e}");
                Err(e.to_string())
            }
        };
        let _ = shared.data.rdma.set(state);
    }
    let mut shm_path = None;
    if let (true, Some(arena)) = (shm, shared.data.arena.clone()) {
        let path = socket
            .unwrap_or_else(|| std::path::PathBuf::from(format!("/tmp/tidepool-{resp_port}.sock")));
        match tidepool_transport::shm::bind(&path, perm) {
            Ok(l) => {
                let _ = shared.data.shm_path.set(path.clone());
                tasks.push(tokio::spawn(tidepool_transport::shm::serve(l, arena)));
                shm_path = Some(path);
            }
            Err(e) => warn!("shm socket {} unavailable ({e}): shm off", path.display()),
        }
    }
    info!(
        data_port = addr.port(),
        shm_socket = ?shm_path,
        arena = shared.data.arena.as_ref().map_or(0, |a| a.size()),
        "data plane ready"
    );
    Ok(tasks)
}

/// Logs when SSD records failed their checksum since the last look (once per
/// sweep, not once per record). Returns the count seen.
fn report_checksum_failures(shared: &Shared, seen: u64) -> u64 {
    let now = shared.store.stats().ssd.map_or(0, |s| s.checksum_failures);
    if now > seen {
        warn!(
            new = now - seen,
            total = now,
            "SSD records failed their checksum: dropped, answered as misses"
        );
    }
    now
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
