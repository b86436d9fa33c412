//! tidepool-client: what serving engines and schedulers link to use tidepool.
//!
//! An async [`Client`] over a pool of connections, with pipelined batch
//! operations (store a chain, read many blocks into caller buffers, ask how much
//! of a prompt's prefix is cached), the chain hash shared with the server
//! (`KV.HASH`), typed errors, and a [`blocking::Client`] wrapper for callers
//! without an async runtime.
//!
//! Block bytes take the server's data plane when it offers one
//! ([`ClientOptions::plane`]): shared memory on the server's host (one copy
//! into the server's arena), else RDMA (cargo feature `rdma`, with a
//! device), else the TCP data port; batches of small blocks go inline in
//! RESP. The calls are the same whichever plane moves the bytes.
//!
//! On a multi-threaded tokio runtime, make bulk calls from a task
//! (`tokio::spawn`) rather than from the future given to `block_on`: that
//! thread does not poll the runtime's I/O driver, so every socket event
//! costs a wakeup passed on from a worker (TCP-plane gets of 1 MiB blocks,
//! looped in 32 MiB calls, moved 4-7% less that way).
//!
//! An engine that computed the KV blocks of a prompt stores them as a chain,
//! and one that is about to serve a prompt asks how much of it is cached and
//! reads those blocks into its own buffers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidepool_client::ClientError> {
//! use tidepool_client::{chain_keys, Client};
//!
//! let client = Client::connect("127.0.0.1:6379", 4).await?;
//! // 64 tokens in blocks of 16: four chained keys, as KV.HASH makes them.
//! let tokens: Vec<u32> = (0..64).collect();
//! let keys = chain_keys(b"model-a", 16, &tokens);
//! let blocks: Vec<_> = keys
//!     .iter()
//!     .map(|k| (k.clone(), vec![7u8; 256 << 10].into()))
//!     .collect();
//! client.put_chain(&blocks, None).await?;
//!
//! // Later: how much of the prompt is cached, held for 30 s while it is read.
//! let hit = client.match_prefix(&keys, Some(30_000)).await?;
//! let mut storage = vec![vec![0u8; 256 << 10]; hit.matched];
//! let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
//! let lens = client.get_many_into(&keys[..hit.matched], &mut bufs).await?;
//! assert!(lens.iter().all(|l| *l == Some(256 << 10)));
//! if let Some(lease) = hit.lease {
//!     client.release(lease).await?;
//! }
//! # Ok(()) }
//! ```

pub mod blocking;
mod client;
mod cluster;
mod conn;
mod data;
mod error;
mod put;

/// The byte buffers keys and blocks are passed in (re-exported, so that a
/// caller needs no `bytes` dependency of its own).
pub use bytes::Bytes;
pub use client::{Client, Match, PutOptions, Stats};
pub use data::{ClientOptions, PlaneChoice};
pub use error::ClientError;
/// A decoded RESP2 reply, as [`Client::command`] returns it.
pub use redis_protocol::resp2::types::BytesFrame as Frame;
pub use tidepool_transport::tcp::TcpOptions;

/// The chain keys of `tokens` split into blocks of `block_tokens`, exactly as
/// `KV.HASH` and `KV.MATCHTOKENS` compute them on the server.
pub fn chain_keys(seed: &[u8], block_tokens: usize, tokens: &[u32]) -> Vec<Bytes> {
    tidepool_protocol::hash::chain_keys(seed, block_tokens, tokens)
        .into_iter()
        .map(|k| Bytes::copy_from_slice(&k))
        .collect()
}
