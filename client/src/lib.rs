//! tidepool-client: what serving engines and schedulers link to use tidepool.
//!
//! An async [`Client`] over a pool of connections, with pipelined batch
//! operations (store a chain, read many blocks into caller buffers, ask how much
//! of a prompt's prefix is cached), the chain hash shared with the server
//! (`KV.HASH`), typed errors, and a [`blocking::Client`] wrapper for callers
//! without an async runtime.
//!
//! Blocks travel inline in RESP for now; the separate data plane (TCP, shared
//! memory, RDMA) comes with its own work.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidepool_client::ClientError> {
//! use tidepool_client::Client;
//! let client = Client::connect("127.0.0.1:6379", 4).await?;
//! let tokens: Vec<u32> = (0..64).collect();
//! let keys = tidepool_client::chain_keys(b"model-a", 16, &tokens);
//! let blocks: Vec<_> = keys.iter().map(|k| (k.clone(), vec![0u8; 1024].into())).collect();
//! client.put_chain(&blocks, None).await?;
//! let hit = client.match_prefix(&keys, None).await?;
//! assert_eq!(hit.matched, 4);
//! # Ok(()) }
//! ```

pub mod blocking;
mod client;
mod conn;
mod data;
mod error;

pub use client::{Client, Match, PutOptions, Stats};
pub use data::{ClientOptions, PlaneChoice};
pub use error::ClientError;
/// A decoded RESP2 reply, as [`Client::command`] returns it.
pub use redis_protocol::resp2::types::BytesFrame as Frame;
pub use tidepool_transport::tcp::TcpOptions;

use bytes::Bytes;

/// The chain keys of `tokens` split into blocks of `block_tokens`, exactly as
/// `KV.HASH` and `KV.MATCHTOKENS` compute them on the server.
pub fn chain_keys(seed: &[u8], block_tokens: usize, tokens: &[u32]) -> Vec<Bytes> {
    tidepool_protocol::hash::chain_keys(seed, block_tokens, tokens)
        .into_iter()
        .map(|k| Bytes::copy_from_slice(&k))
        .collect()
}
