//! One task per connection: read, parse every complete request in the buffer,
//! apply them in order, and flush all their replies with one write.
//!
//! PERFORMANCE CRITICAL: this loop carries every request.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tidepool_protocol::reply::OutBuf;
use tidepool_protocol::{Command, Limits, Reply, RequestParser, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::cmd::{self, Flow};
use crate::observe::Outcome;
use crate::pubsub::{Output, PubMsg, Subscriber};
use crate::session::{Parsed, Pending, Session};
use crate::state::{ClientState, Shared};

/// Replies buffered past this size are written before more requests of the
/// same batch are applied, so a deep pipeline of large GETs cannot grow the
/// output without bound.
const OUT_FLUSH: usize = 4 << 20;

/// Initial read buffer; it grows for large values.
const READ_CHUNK: usize = 16 * 1024;

/// How long a client may stay quiet before a read buffer larger than
/// [`SHRINK_ABOVE`] that it left empty is let go.
const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Read buffers up to this size are kept however quiet the client: the
/// buffer of a connection reading small requests hovers just above
/// [`READ_CHUNK`], and arming a timer on every wait for it cost a tenth of
/// `redis-benchmark -P 16 SET`'s throughput.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;

/// Serves one client until it leaves, breaks the protocol, or the server stops.
pub async fn serve(
    shared: Arc<Shared>,
    mut socket: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    shared.stats.connections.fetch_add(1, Relaxed);
    let laddr = socket.local_addr().unwrap_or(peer);
    let max = shared.config.read().maxclients;
    let fd = {
        use std::os::fd::AsRawFd;
        socket.as_raw_fd()
    };
    let Some(client) = shared.clients.register(peer, laddr, fd, max) else {
        shared.stats.rejected.fetch_add(1, Relaxed);
        let _ = socket
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        return;
    };
    let id = client.id;
    let limits = Limits {
        max_bulk_len: shared.config.read().proto_max_bulk_len.as_u64(),
        ..Limits::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let output = Arc::new(Output::new(shared.pubsub.limits.clone()));
    *client.output.lock() = Some(output.clone());
    let mut session = Session {
        client,
        version: Version::Resp2,
        channels: HashSet::new(),
        patterns: HashSet::new(),
        subscriber: Subscriber {
            tx,
            output: output.clone(),
        },
        exclusive_frame: false,
        leases: Default::default(),
        multi: None,
        monitor: false,
        paused: None,
        remote: None,
    };
    let result = run_loop(
        &shared,
        &mut socket,
        &mut session,
        &mut rx,
        &mut stop,
        limits,
    )
    .await;
    if let Err(e) = result {
        debug!(client = id, error = %e, "connection ended with an error");
    }
    cmd::pubsub::unsubscribe_all(&shared, &mut session);
    if session.monitor && shared.monitors.lock().remove(&id).is_some() {
        shared.monitoring.fetch_sub(1, Relaxed);
    }
    session.leases.release_all(&shared);
    shared.clients.unregister(id);
    // Nothing a departed client half-wrote may linger.
    shared.data.abort_owned(id);
}

async fn run_loop(
    shared: &Shared,
    socket: &mut TcpStream,
    session: &mut Session,
    rx: &mut mpsc::UnboundedReceiver<PubMsg>,
    stop: &mut watch::Receiver<bool>,
    limits: Limits,
) -> std::io::Result<()> {
    let mut parser = RequestParser::new(limits);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = OutBuf::new();
    let mut rbuf_exact = false;
    // Room taken from the shared read-ahead budget for the pending request,
    // and the request size it was taken for.
    let mut ahead: Option<(Grant, usize)> = None;
    // Bytes asked of the socket per read: grows while reads fill the buffer
    // (a pipelining client has more waiting), shrinks back when they do not.
    let mut chunk = READ_CHUNK;
    // CLIENT KILL's wake-up, made once (a Notified made and dropped on every
    // pass of the loop cost about 1% of a pipelined SET's server time).
    let client = session.client.clone();
    let killed = client.kill.notified();
    tokio::pin!(killed);
    loop {
        let wanted = parser.wanted();
        if ahead.as_ref().is_some_and(|(_, w)| *w != wanted) {
            // The request it was taken for is in (or gone): give it back.
            ahead = None;
        }
        if wanted > rbuf.capacity()
            && (EXCLUSIVE_MIN + 1..=UPFRONT_MAX).contains(&wanted)
            && ahead.is_none()
        {
            ahead = shared.read_ahead.take(wanted as u64).map(|g| (g, wanted));
        }
        let granted = ahead.is_some();
        let exclusive = granted && rbuf.capacity() < wanted;
        if exclusive {
            // A large request: read it into a buffer of exactly its size, so its
            // value can be stored as is, without a copy and without pinning
            // anything else (only this request's start is in rbuf now).
            let mut own = BytesMut::with_capacity(wanted);
            own.extend_from_slice(&rbuf);
            rbuf = own;
            rbuf_exact = true;
        } else if wanted == 0 || rbuf.capacity() < wanted {
            rbuf_exact = false;
            reserve_for(&mut rbuf, wanted, chunk, granted);
        }
        let room = rbuf.capacity() - rbuf.len();
        session.client.qbuf.store(rbuf.len(), Relaxed);
        session.client.qbuf_cap.store(rbuf.capacity(), Relaxed);
        let idle = idle_deadline(shared, session);
        let subscribed = session.subscriptions() > 0 || session.monitor;
        // A read buffer grown for a pipeline, now empty, is let go if the
        // client stays quiet (as Redis shrinks idle clients' query buffers):
        // ten thousand clients that each sent one 256 KiB batch would
        // otherwise keep 2.5 GiB between them.
        let shrink = (rbuf.is_empty() && rbuf.capacity() > SHRINK_ABOVE)
            .then(|| tokio::time::Instant::now() + SHRINK_AFTER);
        let wake = shrink.into_iter().chain(idle).min();
        tokio::select! {
            biased;
            read = socket.read_buf(&mut rbuf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                chunk = next_chunk(chunk, n, room);
                shared.stats.net_in.fetch_add(n as u64, Relaxed);
                let mut flow = process(shared, session, &mut parser, &mut rbuf, &mut out, rbuf_exact);
                loop {
                    if !flush_replies(shared, session, socket, &mut out).await? {
                        return Ok(());
                    }
                    match flow {
                        Flow::Continue => break,
                        Flow::Close => return Ok(()),
                        // Replies filled the output: sent; now the rest of the batch.
                        Flow::Flush => {
                            flow = process(shared, session, &mut parser, &mut rbuf, &mut out, false);
                        }
                        // A cluster-wide request: the other nodes answer,
                        // then the rest of the batch.
                        Flow::Remote => {
                            finish_remote(shared, session, &mut out).await;
                            flow = process(shared, session, &mut parser, &mut rbuf, &mut out, false);
                        }
                        // CLIENT PAUSE holds the next request: wait it out
                        // (or until UNPAUSE, or a kill), run it, go on.
                        Flow::Paused => {
                            if !wait_for_pause(shared, session).await {
                                return Ok(());
                            }
                            flow = match resume(shared, session, &parser, &mut out) {
                                Flow::Close => Flow::Close,
                                Flow::Remote => Flow::Remote,
                                _ => process(shared, session, &mut parser, &mut rbuf, &mut out, false),
                            };
                        }
                    }
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                let mut cost = msg.cost();
                cmd::pubsub::encode_message(&msg, session.version, &mut out);
                // Drain what else is queued so a burst goes out in one write.
                while out.len() < 1 << 20 {
                    match rx.try_recv() {
                        Ok(m) => {
                            cost += m.cost();
                            cmd::pubsub::encode_message(&m, session.version, &mut out);
                        }
                        Err(_) => break,
                    }
                }
                let output = session.subscriber.output.clone();
                if !flush_unless_killed(shared, socket, &mut out, &output).await? {
                    return Ok(());
                }
                output.written(cost);
            }
            // Only a subscriber can pass its limit (a disabled branch is
            // not polled: this loop carries every request).
            _ = session.subscriber.output.kill.notified(), if subscribed => {
                debug!(client = session.client.id, "closing a pub/sub client past its output buffer limit");
                return Ok(());
            }
            // One timer for both: the buffer's shrink and the idle timeout.
            // (A disabled branch's future is still built: the timer only in
            // the branch's own block, so none is made without a deadline.)
            _ = async {
                if let Some(at) = wake {
                    tokio::time::sleep_until(at).await
                }
            }, if wake.is_some() => {
                if idle.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    debug!(client = session.client.id, "closing an idle client (timeout)");
                    return Ok(());
                }
                rbuf = BytesMut::new();
                rbuf_exact = false;
                chunk = READ_CHUNK;
            }
            _ = &mut killed => {
                debug!(client = session.client.id, "closed by CLIENT KILL");
                return Ok(());
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// When this client is closed for having sent no whole command for
/// `timeout` seconds, as Redis's `timeout` (subscribers excepted): bytes
/// that never make up a command (a slowloris client) do not count.
fn idle_deadline(shared: &Shared, session: &Session) -> Option<tokio::time::Instant> {
    let secs = shared.idle_timeout.load(Relaxed);
    if secs == 0 || session.subscriptions() > 0 {
        return None;
    }
    let last = shared.started
        + std::time::Duration::from_millis(session.client.last_active_ms.load(Relaxed));
    let from = last.max(session.client.created);
    // A timeout past what the clock can add is none.
    from.checked_add(std::time::Duration::from_secs(secs))
        .map(tokio::time::Instant::from_std)
}

/// Requests up to this size get their whole buffer at once when their header
/// arrives and the read-ahead budget has room (as Redis does for large
/// arguments); beyond it, or without room, the buffer doubles as bytes
/// actually arrive.
const UPFRONT_MAX: usize = 16 << 20;

/// Most bytes of read buffers allocated ahead of their bytes, over all
/// connections. A client that declares a large bulk and stalls holds no
/// more than it sent (twice, at most, plus a read's worth) unless it takes
/// from this budget, so 500 connections each declaring 16 MiB and sending
/// nothing more cannot make the server allocate 8 GiB (they made it grow
/// by a gigabyte, 2.1 MiB each, before the budget).
pub const READ_AHEAD_BUDGET: u64 = 64 << 20;

/// The shared read-ahead budget ([`READ_AHEAD_BUDGET`]).
#[derive(Debug)]
pub struct ReadAhead {
    left: Arc<std::sync::atomic::AtomicU64>,
}

impl ReadAhead {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> ReadAhead {
        ReadAhead {
            left: Arc::new(AtomicU64::new(bytes)),
        }
    }

    /// Takes `bytes` when that much is left; it comes back when the grant
    /// drops.
    pub fn take(&self, bytes: u64) -> Option<Grant> {
        self.left
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(bytes))
            .ok()
            .map(|_| Grant {
                left: self.left.clone(),
                bytes,
            })
    }

    /// Bytes left.
    pub fn left(&self) -> u64 {
        self.left.load(Relaxed)
    }
}

/// Bytes taken from the read-ahead budget, given back on drop.
#[derive(Debug)]
pub struct Grant {
    left: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.left.fetch_add(self.bytes, Relaxed);
    }
}

/// Requests at least this large (a KV block, usually) are read into a buffer of
/// their own so the value is stored without a copy. Smaller values are copied:
/// cheaper than an allocation per request.
const EXCLUSIVE_MIN: usize = 64 * 1024;

/// Most bytes asked of the socket per read (a read buffer grows to this while
/// reads keep filling it): a 32-deep pipeline of 256-key KV.MATCHes is about
/// 100 KiB, and reading it 16 KiB at a time cost a fifth of the server's
/// throughput in syscalls and small batches.
const READ_CHUNK_MAX: usize = 256 * 1024;

/// The read size after a read of `n` bytes into `room` free bytes at `chunk`:
/// doubled when the read filled the room (more is waiting), halved when it
/// used little of it.
fn next_chunk(chunk: usize, n: usize, room: usize) -> usize {
    if n >= room {
        (chunk * 2).min(READ_CHUNK_MAX)
    } else if n < chunk / 8 {
        (chunk / 2).max(READ_CHUNK)
    } else {
        chunk
    }
}

/// Makes room in `rbuf` for the next read of about `chunk` bytes, knowing the
/// pending request needs `wanted` bytes in all (0 when unknown), and
/// whether room for all of it was granted from the read-ahead budget.
fn reserve_for(rbuf: &mut BytesMut, wanted: usize, chunk: usize, granted: bool) {
    let cap = rbuf.capacity();
    if wanted > cap {
        let target = if granted || wanted <= EXCLUSIVE_MIN {
            wanted
        } else {
            // What arrived, doubled (a read's worth at least): memory
            // follows the bytes that came, not the length declared.
            wanted.min((2 * rbuf.len()).max(rbuf.len() + chunk))
        };
        rbuf.reserve(target - rbuf.len());
    } else if cap - rbuf.len() < chunk / 4 {
        rbuf.reserve(chunk);
    }
}

/// Waits while CLIENT PAUSE holds the request in `session.paused`. False
/// when the client was killed meanwhile.
async fn wait_for_pause(shared: &Shared, session: &Session) -> bool {
    loop {
        let spec = session.paused.as_ref().and_then(|p| p.spec);
        let Some(left) = spec.and_then(|s| shared.paused_for(s)) else {
            return true;
        };
        if session.client.killed.load(Relaxed) {
            return false;
        }
        // Woken by UNPAUSE; a CLIENT KILL is seen within 50 ms (its wake-up
        // goes to the connection loop's own waiter).
        let changed = shared.pause_changed.notified();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(left.min(50))) => {}
            _ = changed => {}
        }
    }
}

/// Applies every complete request in `rbuf`, encoding replies into `out`.
/// A request that CLIENT PAUSE holds is kept in `session.paused` and the
/// answer is [`Flow::Paused`]: call [`resume`] once the pause is over.
fn process(
    shared: &Shared,
    session: &mut Session,
    parser: &mut RequestParser,
    rbuf: &mut BytesMut,
    out: &mut OutBuf,
    rbuf_exact: bool,
) -> Flow {
    let mut count = 0u64;
    let mut last = None;
    // Each command's time is the time since the one before it ended: one
    // read of the TSC a command (quanta), where clock_gettime cost about
    // 3% of a pipelined SET's server time here.
    let mut since = quanta::Instant::now();
    let flow = loop {
        if out.len() >= OUT_FLUSH {
            break Flow::Flush;
        }
        let before = rbuf.len();
        let frame = match parser.next_frame(rbuf) {
            Ok(Some(frame)) => frame,
            Ok(None) => break Flow::Continue,
            Err(e) => {
                shared.stats.protocol_errors.fetch_add(1, Relaxed);
                Reply::Error(tidepool_protocol::CommandError::err(e.to_string()))
                    .encode(session.version, out);
                break Flow::Close;
            }
        };
        if frame.is_cross_protocol() {
            shared.stats.protocol_errors.fetch_add(1, Relaxed);
            warn_cross_protocol(&session.client);
            break Flow::Close;
        }
        // The first request of a buffer allocated exactly for it, and nothing else.
        // With an arena, large values are copied into it instead: a block
        // kept in its request's heap buffer would be DRAM-tier memory
        // outside the arena, whose pages stay resident once touched (two
        // homes for the same tier's blocks, and resident memory up to
        // twice the capacity).
        session.exclusive_frame =
            rbuf_exact && count == 0 && rbuf.is_empty() && shared.data.arena.is_none();
        count += 1;
        // What the request took of the buffer (a transaction counts what
        // it holds queued).
        let bytes = before.saturating_sub(rbuf.len());
        let args = frame.len();
        let sample = match &frame {
            tidepool_protocol::request::Frame::Array { buf, .. } => Some(buf.clone()),
            tidepool_protocol::request::Frame::Inline(_) => None,
        };
        let (spec, cmd) = if args > cmd::LONG_ARGS {
            cmd::offload_if(true, || Command::parse_frame(frame))
        } else {
            Command::parse_frame(frame)
        };
        if let Some(spec) = spec {
            last = Some(spec.name);
        }
        let p = Parsed {
            spec,
            cmd,
            sample,
            bytes,
            args,
        };
        if let (Some(spec), Ok(_)) = (spec, &p.cmd) {
            if shared.paused_for(spec).is_some() {
                session.exclusive_frame = false;
                session.paused = Some(p);
                break Flow::Paused;
            }
        }
        let flow = run_one(shared, session, parser.last_spans(), out, p, &mut since);
        if matches!(flow, Flow::Close | Flow::Remote) {
            break flow;
        }
    };
    session.exclusive_frame = false;
    if count > 0 {
        shared.stats.commands.fetch_add(count, Relaxed);
        session
            .client
            .last_active_ms
            .store(shared.uptime_ms(), Relaxed);
        if let Some(name) = last {
            *session.client.last_cmd.lock() = name;
        }
    }
    flow
}

/// Runs the request a pause held, once the pause is over; then the caller
/// goes on with [`process`].
fn resume(
    shared: &Shared,
    session: &mut Session,
    parser: &RequestParser,
    out: &mut OutBuf,
) -> Flow {
    let Some(p) = session.paused.take() else {
        return Flow::Continue;
    };
    let mut since = quanta::Instant::now();
    run_one(shared, session, parser.last_spans(), out, p, &mut since)
}

/// Runs one parsed request: MONITOR, transactions, the command itself, its
/// statistics and slow log entry, its reply.
fn run_one(
    shared: &Shared,
    session: &mut Session,
    spans: &[(usize, usize)],
    out: &mut OutBuf,
    p: Parsed,
    since: &mut quanta::Instant,
) -> Flow {
    let Parsed {
        spec,
        cmd: parsed,
        sample,
        bytes,
        args,
    } = p;
    let long = args > cmd::LONG_ARGS;
    if shared.monitoring.load(Relaxed) > 0 {
        if let (Ok(_), Some(spec)) = (&parsed, spec) {
            feed_monitors(shared, session, spec, &sample, spans);
        }
    }
    let rejected = parsed.is_err();
    // Cluster mode: a request for slots served elsewhere, or for keys in
    // several slots, goes no further; a cluster-wide one over keys other
    // nodes own asks them.
    let redirect = match (shared.cluster.get(), spec, &parsed) {
        (Some(cluster), Some(spec), Ok(cmd)) => {
            let args: Vec<&[u8]> = match &sample {
                Some(buf) => spans.iter().map(|&(o, l)| &buf[o..o + l]).collect(),
                None => Vec::new(),
            };
            match crate::cluster::route(cluster, spec, cmd, &args, session.multi.is_some()) {
                crate::cluster::Route::Here => None,
                crate::cluster::Route::Refused(r) => Some(r),
                crate::cluster::Route::FanOut(work) => {
                    session.remote = Some(Pending {
                        work,
                        spec: Some(spec),
                        sample,
                        spans: spans.to_vec(),
                        started: *since,
                    });
                    return Flow::Remote;
                }
            }
        }
        _ => None,
    };
    let (reply, flow) = match parsed {
        Ok(_) if redirect.is_some() => {
            // As any command that cannot be queued, it fails a transaction.
            if let Some(m) = session.multi.as_mut() {
                m.fail();
            }
            (redirect, Flow::Continue)
        }
        Ok(cmd) => {
            if session.in_subscribed_mode() && !cmd.allowed_in_subscribed_mode() {
                let e = tidepool_protocol::CommandError::err(format!(
                    "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                    spec.map_or("?", |s| s.name)
                ));
                (Some(Reply::Error(e)), Flow::Continue)
            } else if session.multi.is_none() && !cmd.is_transaction() {
                // Outside a transaction: straight to the command.
                if long {
                    cmd::offload_if(true, || cmd::execute(shared, session, cmd, out))
                } else {
                    cmd::execute(shared, session, cmd, out)
                }
            } else {
                match cmd::multi::step(shared, session, cmd, bytes, args, out) {
                    cmd::multi::Step::Done(reply, flow) => (reply, flow),
                    cmd::multi::Step::Run(cmd) if long => {
                        cmd::offload_if(true, || cmd::execute(shared, session, cmd, out))
                    }
                    cmd::multi::Step::Run(cmd) => cmd::execute(shared, session, cmd, out),
                }
            }
        }
        Err(e) => {
            // A command that cannot be queued fails the transaction.
            if let Some(m) = session.multi.as_mut() {
                m.fail();
            }
            (Some(Reply::Error(e)), Flow::Continue)
        }
    };
    let now = quanta::Instant::now();
    let micros = now.duration_since(*since).as_micros() as u64;
    *since = now;
    observe(
        shared, session, spec, &sample, spans, micros, &reply, rejected,
    );
    if let Some(r) = reply {
        r.encode(session.version, out);
    }
    flow
}

/// Counts a command in the command statistics and the slow log.
#[allow(clippy::too_many_arguments)]
fn observe(
    shared: &Shared,
    session: &Session,
    spec: Option<&'static tidepool_protocol::table::CommandSpec>,
    sample: &Option<Bytes>,
    spans: &[(usize, usize)],
    micros: u64,
    reply: &Option<Reply>,
    rejected: bool,
) {
    let outcome = match reply {
        Some(Reply::Error(e)) if rejected => Outcome::Rejected(e.code),
        Some(Reply::Error(e)) => Outcome::Failed(e.code),
        _ => Outcome::Ok,
    };
    shared.observed.record(spec, micros, outcome);
    if shared.observed.is_slow(micros) {
        let args = || match sample {
            Some(buf) => crate::observe::slowlog_args(spans.iter().map(|&(o, l)| &buf[o..o + l])),
            None => vec![Bytes::from_static(spec.map_or("?", |s| s.name).as_bytes())],
        };
        let name = session.client.name.lock().clone().unwrap_or_default();
        shared.observed.slow(
            micros,
            args,
            &session.client.addr.to_string(),
            &String::from_utf8_lossy(&name),
        );
    }
}

/// Finishes the cluster-wide request [`run_one`] left in
/// `session.remote`: its reply, its lease, its statistics.
async fn finish_remote(shared: &Shared, session: &mut Session, out: &mut OutBuf) {
    let Some(p) = session.remote.take() else {
        return;
    };
    let (reply, lease) = crate::fanout::run(shared, p.work).await;
    if let Some(id) = lease {
        session.leases.add(shared, id);
    }
    let micros = quanta::Instant::now().duration_since(p.started).as_micros() as u64;
    let reply = Some(reply);
    observe(
        shared, session, p.spec, &p.sample, &p.spans, micros, &reply, false,
    );
    if let Some(r) = reply {
        r.encode(session.version, out);
    }
}

/// Shows a command to every MONITOR client, as Redis formats it:
/// `+<unix time>.<micros> [0 <addr>] "<arg>" ...`, arguments quoted and
/// escaped. AUTH and HELLO are not shown (they may carry a password).
fn feed_monitors(
    shared: &Shared,
    session: &Session,
    spec: &'static tidepool_protocol::table::CommandSpec,
    sample: &Option<Bytes>,
    spans: &[(usize, usize)],
) {
    if matches!(spec.name, "auth" | "hello") {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = format!(
        "{}.{:06} [0 {}]",
        now.as_secs(),
        now.subsec_micros(),
        session.client.addr
    )
    .into_bytes();
    let mut quote = |arg: &[u8]| {
        line.extend_from_slice(b" \"");
        for &c in arg {
            match c {
                b'\\' | b'"' => line.extend_from_slice(&[b'\\', c]),
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                b'\t' => line.extend_from_slice(b"\\t"),
                0x20..=0x7e => line.push(c),
                _ => line.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
            }
        }
        line.push(b'"');
    };
    match sample {
        Some(buf) => spans.iter().for_each(|&(o, l)| quote(&buf[o..o + l])),
        None => quote(spec.name.as_bytes()),
    }
    let line = Bytes::from(line);
    let monitors = shared.monitors.lock();
    for (id, m) in monitors.iter() {
        if *id != session.client.id {
            m.deliver(crate::pubsub::PubMsg::Monitor(line.clone()));
        }
    }
}

/// Logs an HTTP request seen on the RESP port, at most once a minute (a page
/// that keeps trying must not flood the log).
fn warn_cross_protocol(client: &ClientState) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Relaxed);
    if now >= last + 60 && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
        warn!(
            client = client.id,
            addr = %client.addr,
            "possible cross-protocol attack: an HTTP request (POST or Host:) arrived on the RESP port, \
             probably sent by a web page through a local browser; connection closed, nothing of it ran"
        );
    }
}

/// Writes the replies in `out` under the client's output buffer limits: a
/// subscriber's (see [`flush_unless_killed`]), or a normal client's, as
/// Redis's `client-output-buffer-limit normal`: replies past the hard limit,
/// or above the soft limit and not written within its seconds, close the
/// connection (the blocks they carry stay in memory while they wait, even
/// if deleted meanwhile). False when the connection must close.
async fn flush_replies(
    shared: &Shared,
    session: &Session,
    socket: &mut TcpStream,
    out: &mut OutBuf,
) -> std::io::Result<bool> {
    if session.subscriptions() > 0 {
        return flush_unless_killed(shared, socket, out, &session.subscriber.output).await;
    }
    let l = &shared.normal_limits;
    let (hard, soft) = (l.hard.load(Relaxed), l.soft.load(Relaxed));
    let pending = out.len() as u64;
    if hard > 0 && pending > hard {
        debug!(
            client = session.client.id,
            pending, "closing a client past its output buffer hard limit"
        );
        return Ok(false);
    }
    if soft > 0 && pending > soft {
        let within = std::time::Duration::from_secs(l.soft_secs.load(Relaxed));
        return match tokio::time::timeout(within, flush(shared, socket, out)).await {
            Ok(r) => r.map(|()| true),
            Err(_) => {
                debug!(
                    client = session.client.id,
                    pending, "closing a client above its output buffer soft limit"
                );
                Ok(false)
            }
        };
    }
    flush(shared, socket, out).await.map(|()| true)
}

/// [`flush`], given up when the client passes its output buffer limit
/// meanwhile (a subscriber that stopped reading): false then, and the
/// connection must close.
async fn flush_unless_killed(
    shared: &Shared,
    socket: &mut TcpStream,
    out: &mut OutBuf,
    output: &Output,
) -> std::io::Result<bool> {
    if out.is_empty() {
        return Ok(!output.overflowed.load(Relaxed));
    }
    tokio::select! {
        r = flush(shared, socket, out) => r.map(|()| !output.overflowed.load(Relaxed)),
        _ = output.kill.notified() => {
            debug!("closing a pub/sub client past its output buffer limit");
            Ok(false)
        }
    }
}

/// Writes everything in `out`: one plain write for small batches, a vectored
/// write of headers and (uncopied) values otherwise.
async fn flush(shared: &Shared, socket: &mut TcpStream, out: &mut OutBuf) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    shared.stats.net_out.fetch_add(out.len() as u64, Relaxed);
    if let Some(buf) = out.single() {
        socket.write_all(buf).await?;
        buf.clear();
        return Ok(());
    }
    let chunks = out.take_chunks();
    tidepool_transport::vectored::write_all(socket, &chunks, tidepool_transport::vectored::SLICES)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_growth_is_bounded_by_what_arrives() {
        let mut b = BytesMut::new();
        reserve_for(&mut b, 0, READ_CHUNK, false);
        assert!(b.capacity() >= READ_CHUNK);
        // Granted: the whole request at once.
        reserve_for(&mut b, 1 << 20, READ_CHUNK, true);
        assert!(b.capacity() >= 1 << 20 && b.capacity() < 2 << 20);
        // Not granted: a declaration of 512 MiB gets a read's worth, then
        // doubles only as data fills it.
        let mut b = BytesMut::new();
        reserve_for(&mut b, 512 << 20, READ_CHUNK, false);
        assert!(b.capacity() <= 2 * READ_CHUNK, "{}", b.capacity());
        for _ in 0..6 {
            let cap = b.capacity();
            b.resize(cap, 0);
            reserve_for(&mut b, 512 << 20, READ_CHUNK, false);
            assert!(b.capacity() <= 2 * cap + 2 * READ_CHUNK);
        }
        // Small requests are read whole whatever the budget.
        let mut b = BytesMut::new();
        reserve_for(&mut b, EXCLUSIVE_MIN, READ_CHUNK, false);
        assert!(b.capacity() >= EXCLUSIVE_MIN);
    }

    #[test]
    fn the_read_ahead_budget_comes_back_when_grants_drop() {
        let budget = ReadAhead::new(100);
        let a = budget.take(60).unwrap();
        assert!(budget.take(60).is_none());
        let b = budget.take(40).unwrap();
        assert_eq!(budget.left(), 0);
        drop(a);
        drop(b);
        assert_eq!(budget.left(), 100);
    }

    #[test]
    fn the_read_size_follows_what_arrives() {
        // Reads that fill the buffer double it, up to the most.
        let mut c = READ_CHUNK;
        for _ in 0..10 {
            c = next_chunk(c, c, c);
        }
        assert_eq!(c, READ_CHUNK_MAX);
        // A partly used read keeps it; small reads halve it, down to the least.
        assert_eq!(next_chunk(c, c / 2, c), c);
        for _ in 0..10 {
            c = next_chunk(c, 100, c);
        }
        assert_eq!(c, READ_CHUNK);
        let mut b = BytesMut::new();
        reserve_for(&mut b, 0, READ_CHUNK_MAX, false);
        assert!(b.capacity() >= READ_CHUNK_MAX);
    }
}
