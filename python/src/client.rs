//! `Client` (blocking) and `AsyncClient` (asyncio): the same methods over
//! one tidepool-client, written once (`client_methods!`) and finished
//! either by waiting for the task or by returning an awaitable of it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyTuple};
use tidepool_client::{ClientError, ClientOptions, PlaneChoice, PutOptions};

use crate::buffers::{self, Raw, Targets};
use crate::convert::{Blob, Blobs, Match, PutResults, Reply, StatsOut};
use crate::rt::{async_out, block_on, sync_out, TidepoolError};

/// Where a client connects when given no address.
const DEFAULT_ADDR: &str = "127.0.0.1:6379";

/// More pooled connections than any engine needs; a larger number is a
/// mistake that would open that many sockets.
const MAX_CONNECTIONS: usize = 256;

/// The connected client both classes wrap, until closed.
pub struct Core {
    inner: Mutex<Option<Arc<tidepool_client::Client>>>,
    /// The process that connected it (see [`Core::get`]).
    pid: u32,
}

impl Core {
    fn new(client: tidepool_client::Client) -> Core {
        Core::shared(Arc::new(client))
    }

    fn shared(client: Arc<tidepool_client::Client>) -> Core {
        Core {
            inner: Mutex::new(Some(client)),
            pid: std::process::id(),
        }
    }

    /// The client, unless closed or inherited across a fork (its sockets
    /// are shared with the parent, and its runtime's threads are gone).
    fn get(&self) -> PyResult<Arc<tidepool_client::Client>> {
        Python::attach(buffers::release_pending);
        if std::process::id() != self.pid {
            return Err(TidepoolError::new_err(
                "this client was connected in the parent of this forked process: \
                 connect a new one here",
            ));
        }
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| TidepoolError::new_err("the client is closed"))
    }

    fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn repr(&self, class: &str) -> String {
        match self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(c) => format!(
                "<tidepool.{class} plane={}>",
                c.data_plane().unwrap_or("inline")
            ),
            None => format!("<tidepool.{class} closed>"),
        }
    }
}

/// `host:port`, also from `redis://host:port[/db]` or `tidepool://...`;
/// None: `$TIDEPOOL_ADDR`, else 127.0.0.1:6379.
fn address(addr: Option<&str>) -> PyResult<String> {
    let addr = match addr {
        Some(a) => a.to_string(),
        None => std::env::var("TIDEPOOL_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string()),
    };
    let bare = ["redis://", "tidepool://"]
        .iter()
        .find_map(|s| addr.strip_prefix(s))
        .unwrap_or(&addr);
    let bare = bare.split('/').next().unwrap_or(bare);
    if bare
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(PyValueError::new_err(format!(
            "an address is host:port, got {addr:?}"
        )));
    }
    Ok(bare.to_string())
}

fn plane_choice(plane: &str) -> PyResult<PlaneChoice> {
    Ok(match plane.to_ascii_lowercase().as_str() {
        "auto" => PlaneChoice::Auto,
        "inline" | "resp" => PlaneChoice::Inline,
        "tcp" => PlaneChoice::Tcp,
        "shm" => PlaneChoice::Shm,
        "rdma" => PlaneChoice::Rdma,
        _ => {
            return Err(PyValueError::new_err(format!(
                "plane is one of auto, inline, tcp, shm, rdma; got {plane:?}"
            )))
        }
    })
}

/// The connect keywords both classes take (the stubs list them):
/// `connections` (4), `plane` ("auto"), `inline_below`, `read_lease_ms`,
/// `streaming_reads`, `shm_copy_threads`.
fn options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<ClientOptions> {
    let mut o = ClientOptions::default();
    let Some(kwargs) = kwargs else {
        return Ok(o);
    };
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        if v.is_none() {
            continue; // None: the default
        }
        match name.as_str() {
            "connections" => {
                let n: usize = v.extract()?;
                if n == 0 || n > MAX_CONNECTIONS {
                    return Err(PyValueError::new_err(format!(
                        "connections is 1 to {MAX_CONNECTIONS}, got {n}"
                    )));
                }
                o.connections = n;
            }
            "plane" => o.plane = plane_choice(v.extract()?)?,
            "inline_below" => o.inline_below = v.extract()?,
            "read_lease_ms" => {
                let ms: u64 = v.extract()?;
                if ms == 0 {
                    return Err(PyValueError::new_err("read_lease_ms must be at least 1"));
                }
                o.read_lease_ms = ms;
            }
            "streaming_reads" => o.streaming_reads = v.extract()?,
            "shm_copy_threads" => {
                let n: usize = v.extract()?;
                if n > 64 {
                    return Err(PyValueError::new_err("shm_copy_threads is 0 to 64"));
                }
                o.shm_copy_threads = n;
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument {other:?} (connections, plane, inline_below, \
                     read_lease_ms, streaming_reads, shm_copy_threads)"
                )))
            }
        }
    }
    Ok(o)
}

fn seeds_of(seeds: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = seeds.extract::<String>() {
        return Ok(vec![address(Some(&s))?]);
    }
    let seeds: Vec<String> = seeds.extract()?;
    if seeds.is_empty() {
        return Err(PyValueError::new_err("at least one seed address is needed"));
    }
    seeds.iter().map(|s| address(Some(s))).collect()
}

/// Where a client connects: one node, or a cluster through its seeds.
enum Target {
    One(String),
    Cluster(Vec<String>),
}

impl Target {
    fn node(addr: Option<&str>) -> PyResult<Target> {
        address(addr).map(Target::One)
    }

    fn cluster(seeds: &Bound<'_, PyAny>) -> PyResult<Target> {
        seeds_of(seeds).map(Target::Cluster)
    }

    /// Connects (the future both classes run).
    async fn connect(self, opts: ClientOptions) -> Result<Core, ClientError> {
        let client = match self {
            Target::One(addr) => tidepool_client::Client::connect_with(&addr, opts).await?,
            Target::Cluster(seeds) => {
                let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
                tidepool_client::Client::connect_cluster_with(&seeds, opts).await?
            }
        };
        Ok(Core::new(client))
    }
}

fn tier_name(tier: Option<&str>) -> PyResult<Option<&'static str>> {
    Ok(match tier {
        None => None,
        Some("dram") => Some("dram"),
        Some("ssd") => Some("ssd"),
        Some(t) => {
            return Err(PyValueError::new_err(format!(
                "tier is \"dram\" or \"ssd\", got {t:?}"
            )))
        }
    })
}

fn parent_key(parent: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Bytes>> {
    parent.map(buffers::key).transpose()
}

/// `(key, value)` pairs from an iterable of pairs or a mapping.
fn pairs(blocks: &Bound<'_, PyAny>) -> PyResult<Vec<(Bytes, Bytes)>> {
    let items = match blocks.getattr("items") {
        Ok(items) if blocks.is_instance_of::<pyo3::types::PyDict>() => items.call0()?,
        _ => blocks.clone(),
    };
    items
        .try_iter()?
        .map(|pair| {
            let pair = pair?;
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair
                .extract()
                .map_err(|_| PyTypeError::new_err("blocks are (key, value) pairs"))?;
            Ok((buffers::key(&k)?, buffers::value(&v)?))
        })
        .collect()
}

/// Raw ranges from parallel lists of addresses and lengths.
fn raw_ranges(ptrs: Vec<usize>, lens: Vec<usize>, n: usize) -> PyResult<Vec<Raw>> {
    if ptrs.len() != n || lens.len() != n {
        return Err(PyValueError::new_err(format!(
            "{n} keys but {} addresses and {} lengths",
            ptrs.len(),
            lens.len()
        )));
    }
    ptrs.into_iter()
        .zip(lens)
        .map(|(ptr, len)| {
            if ptr == 0 && len > 0 {
                return Err(PyValueError::new_err("a null address with a length"));
            }
            if ptr.checked_add(len).is_none() {
                return Err(PyValueError::new_err("an address range that wraps"));
            }
            Ok(Raw { ptr, len })
        })
        .collect()
}

/// One argument of a raw command: bytes, str or int.
fn arg(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if obj.is_instance_of::<PyInt>() {
        return Ok(Bytes::from(obj.str()?.to_str()?.to_string()));
    }
    buffers::key(obj)
}

fn checked_results(rs: Vec<Result<(), ClientError>>) -> Result<(), ClientError> {
    rs.into_iter().collect()
}

macro_rules! client_methods {
    ($class:ident, $finish:ident, { $($extra:tt)* }) => {
        #[pymethods]
        impl $class {
            $($extra)*

            /// The data plane block bytes take: "shm", "tcp", "rdma", or
            /// None (inline in RESP). In cluster mode, the first node's.
            #[getter]
            fn data_plane(&self) -> PyResult<Option<&'static str>> {
                Ok(self.core.get()?.data_plane())
            }

            /// In cluster mode, each node's address and data plane; else [].
            fn cluster_nodes(&self) -> PyResult<Vec<(String, Option<&'static str>)>> {
                Ok(self.core.get()?.cluster_nodes())
            }

            /// Stores one block. `parent`: the block before it in its chain
            /// (must be stored); `ttl_ms`: time to live; `pin`: never evict;
            /// `tier`: "dram" or "ssd" (default: the server's).
            #[pyo3(signature = (key, value, *, parent=None, ttl_ms=None, pin=false, tier=None))]
            #[allow(clippy::too_many_arguments)]
            fn put<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
                value: &Bound<'py, PyAny>,
                parent: Option<&Bound<'py, PyAny>>,
                ttl_ms: Option<u64>,
                pin: bool,
                tier: Option<&str>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let (key, value) = (buffers::key(key)?, buffers::value(value)?);
                let opts = PutOptions {
                    parent: parent_key(parent)?,
                    ttl_ms,
                    pin,
                    tier: tier_name(tier)?,
                };
                $finish(py, async move { c.put(key, value, &opts).await })
            }

            /// Stores blocks: `blocks` is an iterable of (key, value) pairs
            /// (or a dict). With `chain`, each block's parent is the one
            /// before it (the first's is `parent`). Returns, per block, None
            /// when stored, else the exception (not raised) saying why not.
            #[pyo3(signature = (blocks, *, chain=false, parent=None))]
            fn put_many<'py>(
                &self,
                py: Python<'py>,
                blocks: &Bound<'py, PyAny>,
                chain: bool,
                parent: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let (blocks, parent) = (pairs(blocks)?, parent_key(parent)?);
                $finish(py, async move {
                    c.put_many(&blocks, chain, parent).await.map(PutResults)
                })
            }

            /// Stores a chain (each block's parent is the one before it);
            /// raises on the first block the server refused.
            #[pyo3(signature = (blocks, *, parent=None))]
            fn put_chain<'py>(
                &self,
                py: Python<'py>,
                blocks: &Bound<'py, PyAny>,
                parent: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let (blocks, parent) = (pairs(blocks)?, parent_key(parent)?);
                $finish(py, async move {
                    checked_results(c.put_many(&blocks, true, parent).await?)
                })
            }

            /// `put_many` from memory the caller manages (a pinned pool):
            /// block i is `lens[i]` bytes at address `ptrs[i]`. The memory
            /// must stay valid and unchanged until the call returns.
            #[pyo3(signature = (keys, ptrs, lens, *, chain=false, parent=None))]
            #[allow(clippy::too_many_arguments)]
            fn put_many_ptrs<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
                ptrs: Vec<usize>,
                lens: Vec<usize>,
                chain: bool,
                parent: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                let raw = raw_ranges(ptrs, lens, keys.len())?;
                let blocks: Vec<(Bytes, Bytes)> = keys
                    .into_iter()
                    .zip(raw)
                    .map(|(k, r)| (k, Bytes::from_owner(r)))
                    .collect();
                let parent = parent_key(parent)?;
                $finish(py, async move {
                    c.put_many(&blocks, chain, parent).await.map(PutResults)
                })
            }

            /// One block's bytes, or None when it is not stored.
            fn get<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let key = buffers::key(key)?;
                $finish(py, async move { c.get(key).await.map(Blob) })
            }

            /// Blocks' bytes (None for a miss), in one round trip.
            fn get_many<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                $finish(py, async move { c.get_many(&keys).await.map(Blobs) })
            }

            /// Reads block i into `bufs[i]` (any writable contiguous buffer:
            /// bytearray, memoryview, numpy array), straight from the data
            /// plane. Returns per key the bytes written, None for a miss. A
            /// buffer smaller than its block raises, and nothing is written
            /// past it.
            fn get_many_into<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
                bufs: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                let bufs: Vec<buffers::Mem> = bufs
                    .try_iter()?
                    .map(|b| buffers::Mem::get(&b?, true))
                    .collect::<PyResult<_>>()?;
                if bufs.len() != keys.len() {
                    return Err(PyValueError::new_err(format!(
                        "{} keys but {} buffers",
                        keys.len(),
                        bufs.len()
                    )));
                }
                let mut targets = Targets::Held(bufs).checked()?;
                $finish(py, async move {
                    // SAFETY: checked disjoint; the exports are held by
                    // `targets`, which this task owns until it ends.
                    let mut slices = unsafe { targets.slices() };
                    c.get_many_into(&keys, &mut slices).await
                })
            }

            /// One block into `buf` (see `get_many_into`): the bytes
            /// written, or None for a miss.
            fn get_into<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
                buf: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = vec![buffers::key(key)?];
                let mut targets = Targets::Held(vec![buffers::Mem::get(buf, true)?]);
                $finish(py, async move {
                    // SAFETY: one target; held by this task until it ends.
                    let mut slices = unsafe { targets.slices() };
                    Ok(c.get_many_into(&keys, &mut slices).await?.pop().flatten())
                })
            }

            /// `get_many_into` into memory the caller manages: block i goes
            /// to address `ptrs[i]`, which has room for `lens[i]` bytes. The
            /// memory must stay valid, and untouched by others, until the
            /// call returns.
            fn get_many_into_ptrs<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
                ptrs: Vec<usize>,
                lens: Vec<usize>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                let mut targets = Targets::Raw(raw_ranges(ptrs, lens, keys.len())?).checked()?;
                $finish(py, async move {
                    // SAFETY: checked disjoint; the caller vouched for the
                    // ranges until the call returns, after this task ends.
                    let mut slices = unsafe { targets.slices() };
                    c.get_many_into(&keys, &mut slices).await
                })
            }

            /// How many leading `keys` are stored (one `KV.MATCH`); with
            /// `lease_ms` they are also held against eviction until
            /// `release(m.lease)` or the lease runs out.
            #[pyo3(signature = (keys, *, lease_ms=None))]
            fn match_prefix<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
                lease_ms: Option<u64>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                $finish(py, async move {
                    c.match_prefix(&keys, lease_ms).await.map(Match::from)
                })
            }

            /// `match_prefix` of the chain the server hashes from token ids
            /// (`KV.MATCHTOKENS`), as `chain_keys(seed, block_tokens, tokens)`.
            #[pyo3(signature = (seed, block_tokens, tokens, *, lease_ms=None))]
            fn match_tokens<'py>(
                &self,
                py: Python<'py>,
                seed: &Bound<'py, PyAny>,
                block_tokens: u32,
                tokens: Vec<u32>,
                lease_ms: Option<u64>,
            ) -> PyResult<Bound<'py, PyAny>> {
                if block_tokens == 0 {
                    return Err(PyValueError::new_err("block_tokens must be at least 1"));
                }
                let c = self.core.get()?;
                let seed = buffers::key(seed)?;
                $finish(py, async move {
                    c.match_tokens(&seed, block_tokens, &tokens, lease_ms)
                        .await
                        .map(Match::from)
                })
            }

            /// Gives a lease back; False when it had already ended.
            fn release<'py>(&self, py: Python<'py>, lease: u64) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                $finish(py, async move { c.release(lease).await })
            }

            /// Per key, the tier holding it ("dram", "ssd") or None.
            fn exists<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                $finish(py, async move { c.exists(&keys).await })
            }

            /// Deletes blocks (and what is chained under them); returns how
            /// many of the keys named were stored.
            fn delete<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                let keys = buffers::keys(keys)?;
                $finish(py, async move { c.delete(&keys).await })
            }

            /// The server's `KV.STATS` as a dict.
            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                $finish(py, async move { c.stats().await.map(StatsOut) })
            }

            /// Sends one command (bytes, str and int arguments) and returns
            /// its reply; an error reply raises `ServerError`.
            #[pyo3(signature = (*args))]
            fn command<'py>(
                &self,
                py: Python<'py>,
                args: &Bound<'py, PyTuple>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let c = self.core.get()?;
                if args.is_empty() {
                    return Err(PyValueError::new_err("a command needs a name"));
                }
                let args: Vec<Bytes> = args.iter().map(|a| arg(&a)).collect::<PyResult<_>>()?;
                $finish(py, async move { c.command(args).await.map(Reply) })
            }

            /// Closes the connections (also on leaving a `with` block);
            /// later calls raise `TidepoolError`.
            fn close(&self) {
                self.core.close();
            }

            fn __repr__(&self) -> String {
                self.core.repr(stringify!($class))
            }
        }
    };
}

/// A blocking tidepool client: each call waits for its reply, with the
/// interpreter released meanwhile (other threads run). Safe to share
/// between threads; calls run on a pool of `connections` sockets.
#[pyclass(frozen, module = "tidepool")]
pub struct Client {
    core: Core,
}

/// An asyncio tidepool client: each call returns an awaitable. Connect with
/// `await AsyncClient.connect(addr)`.
#[pyclass(frozen, module = "tidepool")]
pub struct AsyncClient {
    core: Core,
}

client_methods!(Client, sync_out, {
    /// Connects to a tidepool server at `addr` ("host:port" or
    /// "redis://host:port"; default $TIDEPOOL_ADDR, else 127.0.0.1:6379).
    /// `plane` picks how block bytes travel: "auto" (shared memory when
    /// the server is on this host, else its TCP data port), "shm", "tcp",
    /// "rdma" or "inline" (RESP only).
    #[new]
    #[pyo3(signature = (addr=None, **opts))]
    fn new(
        py: Python<'_>,
        addr: Option<&str>,
        opts: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Client> {
        let target = Target::node(addr)?;
        let opts = options(opts)?;
        let core = block_on(py, target.connect(opts))?;
        Ok(Client { core })
    }

    /// Connects to a tidepool cluster through any of `seeds` (addresses of
    /// some of its nodes): calls over keys go to the nodes that own them.
    #[staticmethod]
    #[pyo3(signature = (seeds, **opts))]
    fn connect_cluster(
        py: Python<'_>,
        seeds: &Bound<'_, PyAny>,
        opts: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Client> {
        let target = Target::cluster(seeds)?;
        let opts = options(opts)?;
        let core = block_on(py, target.connect(opts))?;
        Ok(Client { core })
    }

    /// An `AsyncClient` over this client's connections (for code that has
    /// both blocking and asyncio callers, or must connect outside a loop).
    /// Closing either leaves the other open.
    fn aio(&self) -> PyResult<AsyncClient> {
        Ok(AsyncClient {
            core: Core::shared(self.core.get()?),
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.core.close();
        false
    }
});

client_methods!(AsyncClient, async_out, {
    /// Connects (awaitable) to a tidepool server: the arguments are
    /// `Client`'s.
    #[staticmethod]
    #[pyo3(signature = (addr=None, **opts))]
    fn connect<'py>(
        py: Python<'py>,
        addr: Option<&str>,
        opts: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = Target::node(addr)?;
        let opts = options(opts)?;
        async_out(py, async move {
            Ok(AsyncClient {
                core: target.connect(opts).await?,
            })
        })
    }

    /// Connects (awaitable) to a cluster through any of `seeds`: the
    /// arguments are `Client.connect_cluster`'s.
    #[staticmethod]
    #[pyo3(signature = (seeds, **opts))]
    fn connect_cluster<'py>(
        py: Python<'py>,
        seeds: &Bound<'py, PyAny>,
        opts: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = Target::cluster(seeds)?;
        let opts = options(opts)?;
        async_out(py, async move {
            Ok(AsyncClient {
                core: target.connect(opts).await?,
            })
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.unbind();
        async_out(py, async move { Ok::<_, ClientError>(me) })
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.core.close();
        async_out(py, async move { Ok::<_, ClientError>(false) })
    }
});
