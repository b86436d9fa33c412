//! Transactions: MULTI queues a connection's commands, EXEC runs them in
//! order and answers with all their replies, DISCARD drops them.
//!
//! redis-py's and valkey-py's `pipeline()` is transactional by default, so
//! a Redis client's everyday batch arrives as MULTI ... EXEC. Redis's
//! replies are kept: `+QUEUED` for each queued command, an error for one
//! that cannot be queued (unknown, wrong arity, a bad argument), after
//! which EXEC answers `-EXECABORT` and runs nothing; nested MULTI, and EXEC
//! or DISCARD without MULTI, are errors. Queued commands never run unless
//! EXEC does.
//!
//! What EXEC does not give is Redis's isolation: the store has no global
//! lock (its shards are locked one at a time, each command atomic on its
//! own keys), so another client's command may run between two queued
//! ones. For the same reason WATCH is refused, where the client sees it
//! before anything is queued: optimistic locking that cannot be honoured
//! would lose updates silently.

use std::sync::atomic::Ordering::Relaxed;

use tidepool_protocol::reply::OutBuf;
use tidepool_protocol::{Command, CommandError, Reply};

use super::Flow;
pub use crate::session::Multi;
use crate::session::Session;
use crate::state::Shared;

/// Most commands one transaction may queue.
pub const MAX_QUEUED: usize = 1 << 20;

/// Most request bytes one transaction may hold queued (Redis's default
/// `client-query-buffer-limit`).
pub const MAX_QUEUED_BYTES: usize = 1 << 30;

/// What [`step`] made of a command.
pub enum Step {
    /// Answered (queued, or a transaction command): reply and flow.
    Done(Option<Reply>, Flow),
    /// Not the transaction's: run it as usual.
    Run(Command),
}

fn err(msg: impl Into<std::borrow::Cow<'static, str>>) -> Step {
    Step::Done(Some(Reply::Error(CommandError::err(msg))), Flow::Continue)
}

/// Takes the transaction commands, and queues commands inside MULTI.
/// `bytes` and `args` are the request's size.
pub fn step(
    shared: &Shared,
    session: &mut Session,
    cmd: Command,
    bytes: usize,
    args: usize,
    out: &mut OutBuf,
) -> Step {
    let Some(multi) = session.multi.as_mut() else {
        return match cmd {
            Command::Multi => {
                session.multi = Some(Multi::default());
                session.client.multi.store(0, Relaxed);
                Step::Done(Some(Reply::ok()), Flow::Continue)
            }
            Command::Exec => err("EXEC without MULTI"),
            Command::Discard => err("DISCARD without MULTI"),
            Command::Watch(_) => err(WATCH_REFUSED),
            Command::Unwatch => Step::Done(Some(Reply::ok()), Flow::Continue),
            other => Step::Run(other),
        };
    };
    match cmd {
        Command::Multi => err("MULTI calls can not be nested"),
        Command::Watch(_) => err("WATCH inside MULTI is not allowed"),
        Command::Discard => {
            session.multi = None;
            ended(session);
            Step::Done(Some(Reply::ok()), Flow::Continue)
        }
        Command::Exec => {
            let multi = session.multi.take().expect("in a transaction");
            ended(session);
            Step::Done(Some(exec(shared, session, multi, out)), Flow::Continue)
        }
        // The connection's own commands act at once, as in Redis: QUIT
        // closes it, RESET ends the transaction with everything else.
        cmd @ (Command::Quit | Command::Reset) => {
            session.multi = None;
            ended(session);
            Step::Run(cmd)
        }
        // Commands whose replies are a stream of their own, or that change
        // the protocol of the replies around them, are not queued.
        Command::Subscribe(_)
        | Command::PSubscribe(_)
        | Command::Unsubscribe(_)
        | Command::PUnsubscribe(_)
        | Command::Hello { .. } => {
            multi.failed = true;
            err("Command not allowed inside a transaction")
        }
        cmd => {
            if multi.queued.len() >= MAX_QUEUED || multi.bytes + bytes > MAX_QUEUED_BYTES {
                multi.failed = true;
                return err(format!(
                    "a transaction queues at most {MAX_QUEUED} commands and \
                     {MAX_QUEUED_BYTES} bytes; this one is discarded at EXEC"
                ));
            }
            multi.queued.push(cmd);
            multi.bytes += bytes;
            multi.args += args;
            session
                .client
                .multi
                .store(multi.queued.len() as i64, Relaxed);
            session.client.multi_mem.store(multi.bytes, Relaxed);
            Step::Done(Some(Reply::simple("QUEUED")), Flow::Continue)
        }
    }
}

/// CLIENT LIST shows no transaction any more.
fn ended(session: &Session) {
    session.client.multi.store(-1, Relaxed);
    session.client.multi_mem.store(0, Relaxed);
}

const WATCH_REFUSED: &str = "WATCH is not supported: EXEC runs the queued commands in order but \
     not isolated from other clients, so a watch could not be honoured (see the README, \
     Transactions)";

/// Runs a transaction's queue: an array of the replies, or `-EXECABORT`.
fn exec(shared: &Shared, session: &mut Session, multi: Multi, out: &mut OutBuf) -> Reply {
    if multi.failed {
        return Reply::Error(CommandError::new(
            "EXECABORT",
            "Transaction discarded because of previous errors.",
        ));
    }
    // Queued values are views into earlier read buffers: none may be kept
    // as if its buffer were its own.
    session.exclusive_frame = false;
    let long = multi.args > super::LONG_ARGS;
    super::offload_if(long, || {
        let replies = multi
            .queued
            .into_iter()
            .map(|cmd| {
                super::execute(shared, session, cmd, out)
                    .0
                    .unwrap_or(Reply::Null)
            })
            .collect();
        Reply::Array(replies)
    })
}
