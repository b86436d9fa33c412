//! SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE and message delivery.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tidepool_protocol::reply::OutBuf;
use tidepool_protocol::{Reply, Version};

use crate::pubsub::PubMsg;
use crate::session::Session;
use crate::state::Shared;

fn kind_name(pattern: bool, sub: bool) -> &'static str {
    match (pattern, sub) {
        (false, true) => "subscribe",
        (true, true) => "psubscribe",
        (false, false) => "unsubscribe",
        (true, false) => "punsubscribe",
    }
}

fn confirm(session: &Session, kind: &'static str, name: Option<Bytes>, out: &mut OutBuf) {
    Reply::Push(vec![
        Reply::text(kind),
        name.map_or(Reply::Null, Reply::Bulk),
        Reply::Int(session.subscriptions() as i64),
    ])
    .encode(session.version, out);
}

fn update_counts(session: &Session) {
    session.client.subs.store(session.channels.len(), Relaxed);
    session.client.psubs.store(session.patterns.len(), Relaxed);
}

/// The session's channels or patterns.
fn names_mut(session: &mut Session, pattern: bool) -> &mut HashSet<Bytes> {
    if pattern {
        &mut session.patterns
    } else {
        &mut session.channels
    }
}

/// SUBSCRIBE / PSUBSCRIBE: one confirmation per name, written to `out`.
pub fn subscribe(
    shared: &Shared,
    session: &mut Session,
    names: Vec<Bytes>,
    pattern: bool,
    out: &mut OutBuf,
) {
    for name in names {
        // Copied: a view would keep the whole read buffer it came in for as
        // long as the subscription lasts.
        let name = Bytes::copy_from_slice(&name);
        shared.pubsub.subscribe(
            session.client.id,
            name.clone(),
            pattern,
            &session.subscriber,
        );
        names_mut(session, pattern).insert(name.clone());
        confirm(session, kind_name(pattern, true), Some(name), out);
    }
    update_counts(session);
}

/// UNSUBSCRIBE / PUNSUBSCRIBE; with no names, from everything of that kind.
pub fn unsubscribe(
    shared: &Shared,
    session: &mut Session,
    names: Vec<Bytes>,
    pattern: bool,
    out: &mut OutBuf,
) {
    let names = if names.is_empty() {
        names_mut(session, pattern).iter().cloned().collect()
    } else {
        names
    };
    let kind = kind_name(pattern, false);
    if names.is_empty() {
        confirm(session, kind, None, out);
    }
    for name in names {
        shared.pubsub.unsubscribe(session.client.id, &name, pattern);
        names_mut(session, pattern).remove(&name);
        confirm(session, kind, Some(name), out);
    }
    update_counts(session);
}

/// Drops every subscription of a connection (on RESET and on disconnect).
pub fn unsubscribe_all(shared: &Shared, session: &mut Session) {
    for c in session.channels.drain() {
        shared.pubsub.unsubscribe(session.client.id, &c, false);
    }
    for p in session.patterns.drain() {
        shared.pubsub.unsubscribe(session.client.id, &p, true);
    }
    update_counts(session);
}

/// Encodes a delivered message: an array in RESP2, a push in RESP3.
pub fn encode_message(msg: &PubMsg, version: Version, out: &mut OutBuf) {
    let r = match msg {
        // A status line, as Redis writes MONITOR's lines in both protocols.
        PubMsg::Monitor(line) => Reply::Simple(String::from_utf8_lossy(line).into_owned().into()),
        PubMsg::Message { channel, payload } => Reply::Push(vec![
            Reply::text("message"),
            Reply::Bulk(channel.clone()),
            Reply::Bulk(payload.clone()),
        ]),
        PubMsg::PMessage {
            pattern,
            channel,
            payload,
        } => Reply::Push(vec![
            Reply::text("pmessage"),
            Reply::Bulk(pattern.clone()),
            Reply::Bulk(channel.clone()),
            Reply::Bulk(payload.clone()),
        ]),
    };
    r.encode(version, out);
}
