//! The client's use of the data plane: choosing a transport, and putting and
//! getting blocks through `KV.RESERVE`/`KV.COMMIT` and `KV.LOCATE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use redis_protocol::resp2::types::BytesFrame;
use tidepool_transport::shm::ShmPlane;
use tidepool_transport::tcp::{TcpOptions, TcpPlane, TcpWrites};
use tidepool_transport::{DataPlane, Descriptor, Kind, TransportError};

use crate::ClientError;

/// Which way block bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlaneChoice {
    /// Shared memory when the server is on this host, else RDMA when a
    /// device exists, else TCP; blocks under the inline threshold go in RESP.
    #[default]
    Auto,
    /// Always inline in RESP bulk strings (`KV.MPUT`, `KV.MGET`).
    Inline,
    /// The TCP data port.
    Tcp,
    /// Shared memory (fails to connect when the server is not on this host).
    Shm,
    /// RDMA (fails to connect without the `rdma` feature and a device).
    Rdma,
}

/// Settings of [`crate::Client::connect_with`].
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// RESP connections in the pool. Default 4.
    pub connections: usize,
    /// The data plane. Default [`PlaneChoice::Auto`].
    pub plane: PlaneChoice,
    /// Batches whose largest block is smaller than this travel inline in
    /// RESP (one round trip, where the data plane needs three). Default 64 KiB.
    pub inline_below: usize,
    /// Settings of the TCP data plane.
    pub tcp: TcpOptions,
    /// Lease of blocks read through the data plane, in ms (released as soon
    /// as the bytes are in). A shm or rdma get whose lease runs out before
    /// it is given back fails with [`crate::ClientError::LeaseExpired`].
    /// Default 30000.
    pub read_lease_ms: u64,
    /// Over shm, copy blocks into the caller's buffers with stores that
    /// bypass the CPU cache: faster into buffers that are not in cache
    /// (blocks bound for a GPU or a large host pool; 1 and 4 MiB gets a
    /// quarter to a third faster in `tidepool-bench data`), about 10%
    /// slower when the same buffers are reused while still cached, and the
    /// blocks are then in memory, not in cache, for a CPU that reads them
    /// next. Set false when the CPU reads the blocks right after the get.
    /// Default true.
    pub streaming_reads: bool,
    /// Threads that copy the blocks of shm puts into the server's arena,
    /// while the put's task carries on with reservations and commits
    /// (started by the first shm put); a put reserves as many groups ahead
    /// (at least two). 0 copies on the put's task (blocking its executor
    /// thread meanwhile). Default 2. One core copies at a fraction of a
    /// machine's memory bandwidth: on a 16-core VM 1 MiB puts scaled with
    /// the threads up to eight (11, 22 and 31 GB/s with 2, 4 and 8), while
    /// on two vCPUs more than two did not help.
    pub shm_copy_threads: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connections: 4,
            plane: PlaneChoice::Auto,
            inline_below: 64 * 1024,
            tcp: TcpOptions::default(),
            read_lease_ms: 30_000,
            streaming_reads: true,
            shm_copy_threads: 2,
        }
    }
}

/// Keys per group of a shm (or rdma) get. Locating and leasing costs the
/// server about a microsecond a key; groups hide that behind the copy of
/// the group before, at a round trip each, which pays only for many small
/// blocks (about a tenth more for 64 KiB blocks, a tenth less for 1 MiB
/// ones in groups of four). Over tcp a get is one group: a group's end
/// idles the socket while its last bytes arrive.
const GET_GROUP_KEYS: usize = 64;

/// A connected data plane.
#[derive(Debug)]
pub(crate) enum Plane {
    Tcp(TcpPlane),
    Shm(ShmPlane),
    #[cfg(feature = "rdma")]
    Rdma(tidepool_transport::rdma::RdmaPlane),
}

impl Plane {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Plane::Tcp(p) => p.kind(),
            Plane::Shm(p) => p.kind(),
            #[cfg(feature = "rdma")]
            Plane::Rdma(p) => p.kind(),
        }
    }

    /// Writes the blocks; over shm, also returns each block's checksum,
    /// computed in the copy (for `KV.COMMIT ... CHECKSUMS`: the server then
    /// need not read the block again). Over tcp the server hashes the bytes
    /// as they arrive, if it keeps DRAM checksums.
    pub(crate) async fn write(
        &self,
        blocks: &[(Descriptor, &[u8])],
    ) -> Result<Option<Vec<u64>>, TransportError> {
        match self {
            Plane::Tcp(p) => p.write(blocks).await.map(|()| None),
            Plane::Shm(p) => blocks
                .iter()
                .map(|(d, b)| p.write_one_checksummed(d, b))
                .collect::<Result<Vec<u64>, _>>()
                .map(Some),
            #[cfg(feature = "rdma")]
            Plane::Rdma(p) => p.write(blocks).await.map(|()| None),
        }
    }

    /// Keys per group of a get over this plane; `None`: one group.
    pub(crate) fn get_group_keys(&self) -> Option<usize> {
        match self {
            Plane::Tcp(_) => None,
            _ => Some(GET_GROUP_KEYS),
        }
    }

    /// Whether a read copies out of the server's memory itself (shm,
    /// rdma), so that only a lease still in force when given back says
    /// that memory was not reused during the copy. Over tcp the server
    /// sends the bytes while it holds them.
    pub(crate) fn one_sided(&self) -> bool {
        !matches!(self, Plane::Tcp(_))
    }

    /// The shm plane, if this is it.
    pub(crate) fn shm(&self) -> Option<&ShmPlane> {
        match self {
            Plane::Shm(p) => Some(p),
            _ => None,
        }
    }

    /// A tcp write session ([`TcpWrites`]), for the tcp plane.
    pub(crate) async fn tcp_writes(&self) -> Option<TcpWrites<'_>> {
        match self {
            Plane::Tcp(p) => Some(p.writes().await),
            _ => None,
        }
    }

    pub(crate) async fn read(
        &self,
        blocks: &mut [(Descriptor, &mut [u8])],
    ) -> Result<(), TransportError> {
        match self {
            Plane::Tcp(p) => p.read(blocks).await,
            Plane::Shm(p) => p.read(blocks).await,
            #[cfg(feature = "rdma")]
            Plane::Rdma(p) => p.read(blocks).await,
        }
    }
}

/// What `KV.DATAPLANE` says.
#[derive(Debug, Default)]
pub(crate) struct ServerPlanes {
    tcp_port: Option<u16>,
    shm_socket: Option<PathBuf>,
    arena_id: Option<u64>,
    rdma: Option<String>,
    /// How long the server keeps an uncommitted reservation.
    pub(crate) reserve_timeout_ms: Option<u64>,
}

impl ServerPlanes {
    pub(crate) fn parse(fields: Vec<(String, BytesFrame)>) -> ServerPlanes {
        let mut s = ServerPlanes::default();
        for (k, v) in fields {
            match (k.as_str(), v) {
                ("tcp_port", BytesFrame::Integer(p)) => s.tcp_port = u16::try_from(p).ok(),
                ("shm_socket", BytesFrame::BulkString(b)) => {
                    s.shm_socket = Some(PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
                }
                ("rdma", BytesFrame::BulkString(b)) => {
                    s.rdma = Some(String::from_utf8_lossy(&b).into_owned())
                }
                ("reserve_timeout_ms", BytesFrame::Integer(ms)) => {
                    s.reserve_timeout_ms = u64::try_from(ms).ok()
                }
                ("shm_arena_id", BytesFrame::BulkString(b)) => {
                    s.arena_id = std::str::from_utf8(&b)
                        .ok()
                        .and_then(|t| u64::from_str_radix(t, 16).ok())
                }
                _ => {}
            }
        }
        s
    }
}

fn unavailable(e: TransportError) -> ClientError {
    ClientError::Transport(e)
}

/// Connects the data plane `choice` asks for. `Ok(None)` is inline RESP.
pub(crate) async fn choose(
    opts: &ClientOptions,
    server: &ServerPlanes,
    resp_addr: SocketAddr,
) -> Result<Option<Plane>, ClientError> {
    let (choice, tcp) = (opts.plane, opts.tcp);
    let shm = || -> Result<Plane, ClientError> {
        match (&server.shm_socket, server.arena_id) {
            (Some(path), Some(id)) => Ok(Plane::Shm(
                ShmPlane::connect(path, id)
                    .map_err(unavailable)?
                    .with_streaming_reads(opts.streaming_reads)
                    .with_copy_threads(opts.shm_copy_threads),
            )),
            _ => Err(unavailable(TransportError::Unavailable(
                "the server offers no shm socket".into(),
            ))),
        }
    };
    let tcp_plane = || async {
        let port = server.tcp_port.ok_or_else(|| {
            unavailable(TransportError::Unavailable(
                "the server offers no data port".into(),
            ))
        })?;
        let addr = SocketAddr::new(resp_addr.ip(), port);
        Ok::<_, ClientError>(Plane::Tcp(
            TcpPlane::connect(addr, tcp).await.map_err(unavailable)?,
        ))
    };
    let rdma = || rdma_plane(server, resp_addr);
    match choice {
        PlaneChoice::Inline => Ok(None),
        PlaneChoice::Shm => shm().map(Some),
        PlaneChoice::Tcp => tcp_plane().await.map(Some),
        PlaneChoice::Rdma => rdma().map(Some),
        PlaneChoice::Auto => {
            // Same host: the shm socket answers with the arena the server
            // named. Anything else (another host, another server's socket
            // at that path) falls through.
            if let Ok(p) = shm() {
                return Ok(Some(p));
            }
            if let Ok(p) = rdma() {
                return Ok(Some(p));
            }
            // No data port (an older server, a firewall): inline RESP still
            // does every operation.
            Ok(tcp_plane().await.ok())
        }
    }
}

/// RDMA to the server's registered arena, through its rdma_cm listener on
/// the data port's address.
#[cfg(feature = "rdma")]
fn rdma_plane(server: &ServerPlanes, resp_addr: SocketAddr) -> Result<Plane, ClientError> {
    use tidepool_transport::rdma::{RdmaPlane, RemoteArena};
    let field = server.rdma.as_deref().unwrap_or("unavailable: not offered");
    let remote = RemoteArena::decode(field).map_err(|_| {
        unavailable(TransportError::Unavailable(format!(
            "rdma: the server says {field}"
        )))
    })?;
    let port = server.tcp_port.unwrap_or(0);
    let plane =
        RdmaPlane::connect(SocketAddr::new(resp_addr.ip(), port), remote).map_err(unavailable)?;
    Ok(Plane::Rdma(plane))
}

#[cfg(not(feature = "rdma"))]
fn rdma_plane(_: &ServerPlanes, _: SocketAddr) -> Result<Plane, ClientError> {
    Err(unavailable(TransportError::Unavailable(
        "rdma: this client was built without the rdma feature".into(),
    )))
}

/// One block's reply to KV.RESERVE.
pub(crate) enum Reserved {
    /// Write here, then commit.
    Desc(Descriptor),
    /// Already stored.
    Exists,
    /// Refused.
    Err(ClientError),
}

/// Parses a `[transport, offset, len, token]` descriptor.
pub(crate) fn descriptor(frame: BytesFrame) -> Result<Descriptor, ClientError> {
    let bad = |f: &dyn std::fmt::Debug| ClientError::Unexpected(format!("descriptor {f:?}"));
    let BytesFrame::Array(v) = frame else {
        return Err(bad(&frame));
    };
    match &v[..] {
        [BytesFrame::BulkString(k), BytesFrame::Integer(off), BytesFrame::Integer(len), BytesFrame::Integer(token)] => {
            Ok(Descriptor {
                kind: std::str::from_utf8(k)
                    .ok()
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| bad(k))?,
                offset: *off as u64,
                len: *len as u64,
                token: *token as u64,
            })
        }
        _ => Err(bad(&v)),
    }
}

pub(crate) fn reserved(frame: BytesFrame) -> Result<Reserved, ClientError> {
    Ok(match frame {
        BytesFrame::SimpleString(s) if &s[..] == b"EXISTS" => Reserved::Exists,
        BytesFrame::Error(e) => Reserved::Err(ClientError::server(&e)),
        f => Reserved::Desc(descriptor(f)?),
    })
}
