//! A blocking client for callers without an async runtime: the async
//! [`crate::Client`] driven by a runtime of its own (one client, two faces).
//!
//! ```no_run
//! # fn demo() -> Result<(), tidepool_client::ClientError> {
//! use bytes::Bytes;
//! use tidepool_client::blocking::Client;
//!
//! let client = Client::connect("127.0.0.1:6379", 2)?;
//! let keys = tidepool_client::chain_keys(b"model-a", 16, &(0..32).collect::<Vec<u32>>());
//! let blocks: Vec<(Bytes, Bytes)> = keys
//!     .iter()
//!     .map(|k| (k.clone(), Bytes::from(vec![0u8; 4096])))
//!     .collect();
//! client.put_chain(&blocks, None)?;
//! assert_eq!(client.match_prefix(&keys, None)?.matched, 2);
//! # Ok(()) }
//! ```

use bytes::Bytes;

use crate::{ClientError, ClientOptions, Match, PutOptions, Stats};

/// Blocking tidepool client. Every method blocks the calling thread until the
/// reply is in. Called from inside an async runtime (where blocking a
/// thread stalls other tasks) it refuses, with [`ClientError::Refused`]:
/// use [`crate::Client`] there.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    /// `None` only while being dropped.
    rt: Option<tokio::runtime::Runtime>,
}

/// Refuses to block a thread of an async runtime.
fn outside_async() -> Result<(), ClientError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(ClientError::Refused(
            "the blocking client was called from inside an async runtime: use tidepool_client::Client there".into(),
        )),
        Err(_) => Ok(()),
    }
}

/// A runtime of the blocking client's own, and `connect` driven on it.
fn connected(
    connect: impl std::future::Future<Output = Result<crate::Client, ClientError>>,
) -> Result<Client, ClientError> {
    outside_async()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let inner = rt.block_on(connect)?;
    Ok(Client {
        inner,
        rt: Some(rt),
    })
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropped inside an async runtime, a runtime's own drop would
        // panic (it blocks); this one does not wait for its tasks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Client {
    /// Connects `connections` sockets to a tidepool server.
    pub fn connect(addr: &str, connections: usize) -> Result<Client, ClientError> {
        connected(crate::Client::connect(addr, connections))
    }

    /// Connects with explicit settings (see [`crate::Client::connect_with`]).
    pub fn connect_with(addr: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        connected(crate::Client::connect_with(addr, opts))
    }

    /// Connects to a cluster through any of `seeds` (see
    /// [`crate::Client::connect_cluster`]).
    pub fn connect_cluster(seeds: &[&str], connections: usize) -> Result<Client, ClientError> {
        connected(crate::Client::connect_cluster(seeds, connections))
    }

    /// [`Client::connect_cluster`] with explicit settings.
    pub fn connect_cluster_with(
        seeds: &[&str],
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        connected(crate::Client::connect_cluster_with(seeds, opts))
    }

    /// In cluster mode, each node's address and data plane (see
    /// [`crate::Client::cluster_nodes`]).
    pub fn cluster_nodes(&self) -> Vec<(String, Option<&'static str>)> {
        self.inner.cluster_nodes()
    }

    /// Drives `fut` on this client's runtime, unless called from inside an
    /// async runtime.
    fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        outside_async()?;
        self.rt
            .as_ref()
            .expect("the runtime lives until the client drops")
            .block_on(fut)
    }

    /// The data plane in use (see [`crate::Client::data_plane`]).
    pub fn data_plane(&self) -> Option<&'static str> {
        self.inner.data_plane()
    }

    /// See [`crate::Client::put`].
    pub fn put(&self, key: Bytes, value: Bytes, opts: &PutOptions) -> Result<(), ClientError> {
        self.run(self.inner.put(key, value, opts))
    }

    /// See [`crate::Client::put_many`].
    pub fn put_many(
        &self,
        blocks: &[(Bytes, Bytes)],
        chain: bool,
        parent: Option<Bytes>,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        self.run(self.inner.put_many(blocks, chain, parent))
    }

    /// See [`crate::Client::put_chain`].
    pub fn put_chain(
        &self,
        blocks: &[(Bytes, Bytes)],
        parent: Option<Bytes>,
    ) -> Result<(), ClientError> {
        self.run(self.inner.put_chain(blocks, parent))
    }

    /// See [`crate::Client::get`].
    pub fn get(&self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        self.run(self.inner.get(key))
    }

    /// See [`crate::Client::get_many`].
    pub fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, ClientError> {
        self.run(self.inner.get_many(keys))
    }

    /// See [`crate::Client::get_many_into`].
    pub fn get_many_into(
        &self,
        keys: &[Bytes],
        bufs: &mut [&mut [u8]],
    ) -> Result<Vec<Option<usize>>, ClientError> {
        self.run(self.inner.get_many_into(keys, bufs))
    }

    /// See [`crate::Client::match_prefix`].
    pub fn match_prefix(
        &self,
        keys: &[Bytes],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        self.run(self.inner.match_prefix(keys, lease_ms))
    }

    /// See [`crate::Client::match_tokens`].
    pub fn match_tokens(
        &self,
        seed: &[u8],
        block_tokens: u32,
        tokens: &[u32],
        lease_ms: Option<u64>,
    ) -> Result<Match, ClientError> {
        self.run(
            self.inner
                .match_tokens(seed, block_tokens, tokens, lease_ms),
        )
    }

    /// See [`crate::Client::release`].
    pub fn release(&self, lease: u64) -> Result<bool, ClientError> {
        self.run(self.inner.release(lease))
    }

    /// See [`crate::Client::exists`].
    pub fn exists(&self, keys: &[Bytes]) -> Result<Vec<Option<String>>, ClientError> {
        self.run(self.inner.exists(keys))
    }

    /// See [`crate::Client::delete`].
    pub fn delete(&self, keys: &[Bytes]) -> Result<usize, ClientError> {
        self.run(self.inner.delete(keys))
    }

    /// See [`crate::Client::stats`].
    pub fn stats(&self) -> Result<Stats, ClientError> {
        self.run(self.inner.stats())
    }
}
