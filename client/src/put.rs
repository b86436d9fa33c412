//! How a data-plane put moves its groups' bytes, one transport each: the
//! put itself ([`crate::Client`]'s `put_many_via`) reserves, moves and
//! commits groups in a pipeline and leaves the moving to a [`Mover`].
//!
//! A group's turn has two halves around the replies the put reads in it:
//! [`Mover::start`] before them, [`Mover::finish`] after. Over tcp `start`
//! sends the group's bytes and confirms the group before it (whose commit
//! then goes out at once), so that the socket never idles while the server
//! takes in a group's last bytes. Over shm the copies were queued on the
//! plane's threads as soon as the group's reservation came in
//! ([`Mover::reserved`]), and `finish` awaits them and takes their
//! checksums. Over rdma `start` posts the one-sided writes, unless the
//! reservation's deadline has passed.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tidepool_transport::shm::{ShmPlane, ShmWrite};
use tidepool_transport::tcp::TcpWrites;
use tidepool_transport::{Descriptor, Kind, TransportError};

use crate::data::Plane;

/// A group's blocks (their indices in the put) and their reservations.
pub(crate) type Group = Vec<(usize, Descriptor)>;

/// A group ready to commit, with the checksums its copy computed (shm).
pub(crate) type Written = (Group, Option<Vec<u64>>);

/// A group that failed, with every group that fails with it.
pub(crate) struct Failure {
    pub(crate) error: TransportError,
    pub(crate) lost: Group,
}

/// Bytes per group of a data-plane put: reserved, moved and committed
/// together, while the neighbouring groups are at the server.
const COMMIT_GROUP: usize = 4 << 20;

/// Over tcp a group ends with a wait for the data port's replies, in which
/// the sockets idle, so tcp groups are larger (16 MiB moved 1 MiB puts a
/// fifth faster than 4 MiB), and cut at `TCP_GROUP_BLOCKS` blocks, since a
/// group's reservation and commit grow with its blocks (256 beat 64 for
/// 64 KiB blocks; 16 KiB blocks did not care). A group's bytes go out
/// before the replies to the group before it are read, which hides most of
/// that wait.
const TCP_COMMIT_GROUP: usize = 16 << 20;
const TCP_GROUP_BLOCKS: usize = 256;

/// Cuts blocks of these sizes into runs (ranges of indices) of about
/// `group_bytes` bytes and at most `group_blocks` blocks, none empty.
pub(crate) fn put_groups(
    sizes: impl Iterator<Item = usize>,
    group_bytes: usize,
    group_blocks: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes, mut n) = (0, 0, 0);
    for (i, len) in sizes.enumerate() {
        bytes += len;
        n = i + 1;
        if bytes >= group_bytes || n - start >= group_blocks {
            groups.push(start..n);
            (start, bytes) = (n, 0);
        }
    }
    if start < n {
        groups.push(start..n);
    }
    groups
}

/// Moves a put's groups over one plane.
pub(crate) enum Mover<'p> {
    /// tcp: bytes sent in the group's turn, confirmed in the next.
    Tcp {
        writes: TcpWrites<'p>,
        /// The group sent and not yet confirmed.
        sent: Option<Group>,
    },
    /// shm: copies queued on the plane's threads as reservations come in,
    /// awaited in order.
    Shm {
        plane: &'p ShmPlane,
        queued: VecDeque<Result<ShmWrite, TransportError>>,
        /// The next group to queue.
        next: usize,
    },
    /// One-sided writes posted in the group's turn (rdma).
    Posted {
        plane: &'p Plane,
        /// What the group's writes gave, between `start` and `finish`.
        done: Option<Option<Vec<u64>>>,
    },
}

impl<'p> Mover<'p> {
    /// The mover of `plane` (over tcp it holds the data connections until
    /// it is dropped or ended).
    pub(crate) async fn new(plane: &'p Plane) -> Mover<'p> {
        if let Some(writes) = plane.tcp_writes().await {
            return Mover::Tcp { writes, sent: None };
        }
        match plane.shm() {
            Some(plane) => Mover::Shm {
                plane,
                queued: VecDeque::new(),
                next: 0,
            },
            None => Mover::Posted { plane, done: None },
        }
    }

    /// A put of blocks of `sizes` over a plane of `kind`, cut into groups.
    pub(crate) fn groups(
        kind: Kind,
        sizes: impl Iterator<Item = usize>,
    ) -> Vec<std::ops::Range<usize>> {
        match kind {
            Kind::Tcp => put_groups(sizes, TCP_COMMIT_GROUP, TCP_GROUP_BLOCKS),
            _ => put_groups(sizes, COMMIT_GROUP, usize::MAX),
        }
    }

    /// Groups reserved ahead of the one moving over `plane`: two; over shm
    /// as many as copy at once (the threads copy the groups queued, one
    /// group's blocks at a time when a group is one large block).
    pub(crate) fn ahead(plane: &Plane) -> usize {
        plane.shm().map_or(2, |p| p.copy_threads().max(2))
    }

    /// Reservations came in (`reserved[g]` once group g's is): over shm,
    /// the copies of each group reserved, in order, are queued now, none
    /// to start after `deadline(g)`.
    pub(crate) fn reserved(
        &mut self,
        reserved: &[Option<Group>],
        blocks: &[(Bytes, Bytes)],
        deadline: &dyn Fn(usize) -> Option<Instant>,
    ) {
        let Mover::Shm {
            plane,
            queued,
            next,
        } = self
        else {
            return;
        };
        while let Some(Some(r)) = reserved.get(*next) {
            let copies = r.iter().map(|(i, d)| (*d, blocks[*i].1.clone()));
            queued.push_back(plane.write_queued(copies.collect(), deadline(*next)));
            *next += 1;
        }
    }

    /// Group `g`'s turn, before the replies of the step before are read.
    /// Returns a group confirmed now, to commit at once (tcp: the group
    /// before).
    pub(crate) async fn start(
        &mut self,
        g: usize,
        cur: &Group,
        blocks: &[(Bytes, Bytes)],
        deadline: Option<Instant>,
    ) -> Result<Option<Group>, TransportError> {
        let writes = || -> Vec<(Descriptor, &[u8])> {
            cur.iter().map(|(i, d)| (*d, &blocks[*i].1[..])).collect()
        };
        match self {
            Mover::Tcp { writes: w, sent } => {
                w.send(&writes()).await?;
                let Some(before) = sent.take() else {
                    return Ok(None);
                };
                match w.confirm().await {
                    Ok(()) => Ok(Some(before)),
                    Err(e) => {
                        *sent = Some(before);
                        Err(e)
                    }
                }
            }
            Mover::Shm { .. } => Ok(None),
            Mover::Posted { plane, done } => {
                if deadline.is_some_and(|by| Instant::now() >= by) {
                    return Err(TransportError::Expired(format!(
                        "group {g}'s writes were due to start after its reservation's deadline"
                    )));
                }
                *done = Some(plane.write(&writes()).await?);
                Ok(None)
            }
        }
    }

    /// Group `g`'s turn, after the replies: the group ready to commit at
    /// the next step, if one is (tcp: none, it waits to be confirmed).
    pub(crate) async fn finish(
        &mut self,
        g: usize,
        cur: Group,
    ) -> Result<Option<Written>, Failure> {
        let moved = match self {
            Mover::Tcp { sent, .. } => {
                debug_assert!(sent.is_none());
                *sent = Some(cur);
                return Ok(None);
            }
            Mover::Shm { queued, .. } => match queued.pop_front() {
                Some(Ok(w)) => w.finish().await.map(Some),
                Some(Err(e)) => Err(e),
                None => Err(TransportError::Protocol(format!("group {g} not queued"))),
            },
            Mover::Posted { done, .. } => done
                .take()
                .ok_or_else(|| TransportError::Protocol(format!("group {g} not written"))),
        };
        match moved {
            Ok(sums) => Ok(Some((cur, sums))),
            Err(error) => Err(self.fail(error, cur)),
        }
    }

    /// `error` ends the put at group `cur`: it fails with the group sent
    /// before it and not confirmed (tcp).
    pub(crate) fn fail(&mut self, error: TransportError, cur: Group) -> Failure {
        let mut lost = match self {
            Mover::Tcp { sent, .. } => sent.take().unwrap_or_default(),
            _ => Vec::new(),
        };
        lost.extend(cur);
        Failure { error, lost }
    }

    /// After the last group: the group still to confirm (tcp), ready to
    /// commit. The tcp connections go back to the plane only when every
    /// group was confirmed.
    pub(crate) async fn end(self) -> Result<Option<Written>, Failure> {
        let Mover::Tcp { mut writes, sent } = self else {
            return Ok(None);
        };
        let Some(last) = sent else {
            writes.finish();
            return Ok(None);
        };
        match writes.confirm().await {
            Ok(()) => {
                writes.finish();
                Ok(Some((last, None)))
            }
            Err(error) => Err(Failure { error, lost: last }),
        }
    }
}
