//! The protocol side of a data-plane get, as a task of its own.
//!
//! A get moves its blocks in groups: each group is located (`KV.LOCATE ...
//! LEASE`), copied into the caller's buffers, and its lease given back
//! (`KV.RELEASE`). The copy runs in the caller's task (it writes into the
//! caller's borrowed buffers, which no other thread may touch); the
//! locating, the releasing and the parsing of replies run here, in a task
//! spawned on the runtime, so on a multi-threaded runtime they overlap the
//! copy instead of waiting between copies. 32 MiB gets of 64 KiB blocks
//! over shm spent a fifth of their time on that work when it ran between
//! copies.
//!
//! The task owns the pooled connection for the whole get and leaves it in
//! step: it reads every reply it is owed, also when the caller gives up (its
//! future dropped) or fails, and gives back every lease it took.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::OwnedMutexGuard;

use crate::conn::Conn;
use crate::data;
use crate::ClientError;
use tidepool_transport::Descriptor;

/// Groups located ahead of the caller's copy: the server has the time of
/// that many groups' copies to answer.
const AHEAD: usize = 3;

/// One located group, as the caller needs it: a location (or a miss) per
/// key.
pub(crate) type Located = Result<Vec<Option<Descriptor>>, ClientError>;

/// What the task needs to locate and release a get's groups.
pub(crate) struct GetDriver {
    pub(crate) conn: OwnedMutexGuard<Conn>,
    pub(crate) keys: Vec<Bytes>,
    pub(crate) groups: Vec<Range<usize>>,
    pub(crate) lease_ms: u64,
    pub(crate) via: &'static str,
    /// The server, for giving leases back when `conn` failed.
    pub(crate) addr: Arc<str>,
}

enum Owed {
    Locate(usize),
    Release,
}

impl GetDriver {
    /// Locates the groups in order and sends each to `located`; gives a
    /// group's lease back when the caller says (`done`) it has moved. Ends
    /// when every group has moved, or the caller is gone, with every lease
    /// given back and every reply read; a failure goes to the caller.
    pub(crate) async fn run(
        mut self,
        located: UnboundedSender<Located>,
        mut done: UnboundedReceiver<usize>,
    ) {
        let mut leases: Vec<Option<u64>> = vec![None; self.groups.len()];
        let out = self.exchange(&located, &mut done, &mut leases).await;
        let held: Vec<u64> = leases.into_iter().flatten().collect();
        if let Err(e) = out {
            self.conn.broken = true;
            let _ = located.send(Err(e));
        }
        if held.is_empty() {
            return;
        }
        let releases: Vec<Vec<Bytes>> = held.into_iter().map(release_cmd).collect();
        if self.conn.in_step() {
            let _ = self.conn.pipeline(&releases).await;
        } else if let Ok(mut other) = Conn::connect(&self.addr).await {
            // Best effort: a lease not given back expires.
            let _ = other.pipeline(&releases).await;
        }
    }

    async fn exchange(
        &mut self,
        located: &UnboundedSender<Located>,
        done: &mut UnboundedReceiver<usize>,
        leases: &mut [Option<u64>],
    ) -> Result<(), ClientError> {
        let n = self.groups.len();
        let mut owed: VecDeque<Owed> = VecDeque::new();
        let first: Vec<Vec<Bytes>> = (0..n.min(AHEAD)).map(|g| self.locate_cmd(g)).collect();
        self.conn.send(&first).await?;
        owed.extend((0..first.len()).map(Owed::Locate));
        let mut next = first.len();
        let (mut moved, mut caller_gone) = (0, false);
        while !owed.is_empty() || (moved < n && !caller_gone) {
            enum Event {
                Done(Option<usize>),
                Reply(Result<Vec<BytesFrame>, ClientError>),
            }
            let listening = moved < n && !caller_gone;
            let event = tokio::select! {
                biased;
                d = done.recv(), if listening => Event::Done(d),
                // Cancel-safe: a reply not wholly read stays in the buffer.
                f = self.conn.recv(1), if !owed.is_empty() => Event::Reply(f),
            };
            match event {
                Event::Done(Some(g)) => {
                    moved += 1;
                    let mut cmds = Vec::new();
                    if let Some(lease) = leases[g].take() {
                        cmds.push(release_cmd(lease));
                        owed.push_back(Owed::Release);
                    }
                    if next < n {
                        cmds.push(self.locate_cmd(next));
                        owed.push_back(Owed::Locate(next));
                        next += 1;
                    }
                    if !cmds.is_empty() {
                        self.conn.send(&cmds).await?;
                    }
                }
                // The caller gave up or failed: locate nothing more; what is
                // located still comes in and goes back.
                Event::Done(None) => caller_gone = true,
                Event::Reply(frames) => {
                    let f = frames?.pop().expect("one reply");
                    match owed.pop_front().expect("a reply was owed") {
                        Owed::Locate(g) => {
                            let (lease, blocks) = locate_reply(f, self.groups[g].len())?;
                            leases[g] = Some(lease);
                            let group = blocks.into_iter().map(location).collect();
                            if located.send(group).is_err() {
                                caller_gone = true;
                            }
                        }
                        Owed::Release => {
                            crate::client::int(f)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn locate_cmd(&self, g: usize) -> Vec<Bytes> {
        let keys = &self.keys[self.groups[g].clone()];
        let mut cmd = Vec::with_capacity(keys.len() + 6);
        cmd.extend([Bytes::from_static(b"KV.LOCATE"), num(keys.len() as u64)]);
        cmd.extend(keys.iter().cloned());
        cmd.extend([
            Bytes::from_static(b"LEASE"),
            num(self.lease_ms),
            Bytes::from_static(b"VIA"),
            Bytes::from_static(self.via.as_bytes()),
        ]);
        cmd
    }
}

fn num(n: u64) -> Bytes {
    Bytes::copy_from_slice(itoa::Buffer::new().format(n).as_bytes())
}

fn release_cmd(lease: u64) -> Vec<Bytes> {
    vec![Bytes::from_static(b"KV.RELEASE"), num(lease)]
}

/// One key's location: a descriptor, or nil for a miss.
fn location(frame: BytesFrame) -> Result<Option<Descriptor>, ClientError> {
    match crate::client::check(frame)? {
        BytesFrame::Null => Ok(None),
        f => data::descriptor(f).map(Some),
    }
}

/// A KV.LOCATE reply for `n` keys: its lease and one location (a
/// descriptor or nil) per key.
fn locate_reply(frame: BytesFrame, n: usize) -> Result<(u64, Vec<BytesFrame>), ClientError> {
    let (mut lease, mut located) = (None, Vec::new());
    for (k, v) in crate::client::pairs(frame)? {
        match (k.as_str(), v) {
            ("lease", BytesFrame::Integer(l)) => lease = Some(l as u64),
            ("blocks", f) => located = crate::client::array(f)?,
            _ => {}
        }
    }
    let lease = lease.ok_or_else(|| ClientError::Unexpected("KV.LOCATE without a lease".into()))?;
    if located.len() != n {
        return Err(ClientError::Unexpected(format!(
            "{} locations for {n} keys",
            located.len()
        )));
    }
    Ok((lease, located))
}
