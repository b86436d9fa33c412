//! RDMA (cargo feature `rdma`): RC queue pairs with one-sided READ and WRITE
//! into the server's registered arena, through rdma-sys (libibverbs and
//! librdmacm).
//!
//! The server registers its whole arena as one memory region and announces
//! it as a [`RemoteArena`] (base address, rkey, size) in `KV.DATAPLANE`; a
//! descriptor's offset is then an offset in that region, and the client
//! WRITEs into or READs out of `base + offset` with the rkey, without the
//! server's CPU. A client buffer is registered for the one transfer that
//! uses it, unless its owner registered it ahead ([`RdmaPlane::register`],
//! kept in a [`Registry`]): a registration pins the pages it found, so one
//! kept past the buffer's life (memory freed and mapped again at the same
//! address) would move bytes to and from pages nobody reads any more.
//!
//! NOT RUN ON HARDWARE: the machine this was written on has no RDMA device
//! and cannot load soft-RoCE. What runs without a device is tested: the
//! registration bookkeeping, the descriptor encoding, device discovery
//! answering "no RDMA device", and connection set-up failing cleanly. The
//! verbs path (queue pairs, posting, polling) has never executed.

use std::ffi::CStr;
use std::net::SocketAddr;
use std::ptr;
use std::time::Duration;

use parking_lot::Mutex;
use rdma_sys::*;

use crate::{check_lengths, DataPlane, Descriptor, Kind, TransportError};

/// The server's registered arena, as a client needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteArena {
    /// Virtual address of the arena's first byte in the server.
    pub base: u64,
    /// Remote key of the arena's memory region.
    pub rkey: u32,
    /// Size in bytes.
    pub size: u64,
}

impl RemoteArena {
    /// The text form used in `KV.DATAPLANE`: `base:rkey:size`, in hex.
    pub fn encode(&self) -> String {
        format!("{:x}:{:x}:{:x}", self.base, self.rkey, self.size)
    }

    /// Parses [`RemoteArena::encode`]'s form.
    pub fn decode(s: &str) -> Result<RemoteArena, TransportError> {
        let bad = || TransportError::Protocol(format!("bad rdma arena '{s}'"));
        let mut it = s.split(':');
        let mut next = |max: u64| {
            it.next()
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .filter(|v| *v <= max)
                .ok_or_else(bad)
        };
        let out = RemoteArena {
            base: next(u64::MAX)?,
            rkey: next(u32::MAX as u64)? as u32,
            size: next(u64::MAX)?,
        };
        if it.next().is_some() || out.base.checked_add(out.size).is_none() {
            return Err(bad());
        }
        Ok(out)
    }

    /// The remote address of a descriptor's block, checked against the arena.
    pub fn address_of(&self, d: &Descriptor) -> Result<u64, TransportError> {
        match d.offset.checked_add(d.len) {
            Some(end) if end <= self.size => Ok(self.base + d.offset),
            _ => Err(TransportError::Descriptor(format!(
                "[{}, +{}) is outside the remote arena of {} bytes",
                d.offset, d.len, self.size
            ))),
        }
    }
}

/// Registered local memory: which address ranges have a memory region, and
/// its local key. Pure bookkeeping (no verbs), so it is tested without a
/// device; [`RdmaPlane`] keeps the ranges its owner registered ahead.
#[derive(Debug, Default)]
pub struct Registry {
    /// (start, end, lkey, handle) sorted by start; ranges never overlap.
    regions: Vec<(u64, u64, u32, usize)>,
}

impl Registry {
    /// The local key of a registered range covering `[addr, addr + len)`.
    pub fn lookup(&self, addr: u64, len: u64) -> Option<u32> {
        let end = addr.checked_add(len)?;
        let i = self.regions.partition_point(|r| r.0 <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (end <= r.1).then_some(r.2)
    }

    /// Records a registration. Refuses an empty range or one overlapping a
    /// recorded range (the caller registers the gap instead).
    pub fn insert(&mut self, addr: u64, len: u64, lkey: u32, handle: usize) -> Result<(), String> {
        let end = addr
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or("empty or wrapping range")?;
        let i = self.regions.partition_point(|r| r.0 < addr);
        let clash_before = i > 0 && self.regions[i - 1].1 > addr;
        let clash_after = self.regions.get(i).is_some_and(|r| r.0 < end);
        if clash_before || clash_after {
            return Err(format!(
                "[{addr:#x}, {end:#x}) overlaps a registered region"
            ));
        }
        self.regions.insert(i, (addr, end, lkey, handle));
        Ok(())
    }

    /// Forgets the range starting at `addr`; returns its handle.
    pub fn remove(&mut self, addr: u64) -> Option<usize> {
        let i = self.regions.iter().position(|r| r.0 == addr)?;
        Some(self.regions.remove(i).3)
    }

    /// Registered ranges.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

/// The names of the RDMA devices of this host; "no RDMA device" when there
/// are none (or the verbs library finds no driver).
pub fn devices() -> Result<Vec<String>, TransportError> {
    let mut n = 0i32;
    // SAFETY: plain libibverbs calls; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() || n <= 0 {
        if !list.is_null() {
            // SAFETY: returned by ibv_get_device_list.
            unsafe { ibv_free_device_list(list) };
        }
        return Err(TransportError::Unavailable("no RDMA device".into()));
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: the list holds n valid device pointers.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: returned by ibv_get_device_list.
    unsafe { ibv_free_device_list(list) };
    Ok(names)
}

fn os_err(what: &str) -> TransportError {
    TransportError::Io(std::io::Error::new(
        std::io::Error::last_os_error().kind(),
        format!("{what}: {}", std::io::Error::last_os_error()),
    ))
}

/// An rdma_cm connection with its queue pair, protection domain and
/// completion queue.
struct Endpoint {
    channel: *mut rdma_event_channel,
    id: *mut rdma_cm_id,
    cq: *mut ibv_cq,
}

// SAFETY: the verbs objects are used under the plane's mutex only.
unsafe impl Send for Endpoint {}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was created by us and is freed once.
        unsafe {
            if !self.id.is_null() {
                if !(*self.id).qp.is_null() {
                    rdma_disconnect(self.id);
                    rdma_destroy_qp(self.id);
                }
                rdma_destroy_id(self.id);
            }
            if !self.cq.is_null() {
                ibv_destroy_cq(self.cq);
            }
            if !self.channel.is_null() {
                rdma_destroy_event_channel(self.channel);
            }
        }
    }
}

/// Waits for the next rdma_cm event and checks it is `want`.
fn expect_event(
    channel: *mut rdma_event_channel,
    want: rdma_cm_event_type::Type,
) -> Result<(), TransportError> {
    let mut ev: *mut rdma_cm_event = ptr::null_mut();
    // SAFETY: channel is live; the event is acked below.
    if unsafe { rdma_get_cm_event(channel, &mut ev) } != 0 {
        return Err(os_err("rdma_get_cm_event"));
    }
    // SAFETY: a valid event until acked.
    let (got, status) = unsafe { ((*ev).event, (*ev).status) };
    // SAFETY: acknowledging the event we got.
    unsafe { rdma_ack_cm_event(ev) };
    if got != want {
        return Err(TransportError::Unavailable(format!(
            "rdma_cm: event {got} (status {status}), expected {want}"
        )));
    }
    Ok(())
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

impl Endpoint {
    /// Resolves `peer`, creates an RC queue pair and connects.
    fn connect(peer: SocketAddr, timeout: Duration) -> Result<Endpoint, TransportError> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: creating a fresh channel; Drop frees it.
        let channel = unsafe { rdma_create_event_channel() };
        if channel.is_null() {
            return Err(os_err("rdma_create_event_channel"));
        }
        let mut ep = Endpoint {
            channel,
            id: ptr::null_mut(),
            cq: ptr::null_mut(),
        };
        // SAFETY: channel is live; the id is destroyed in Drop.
        if unsafe {
            rdma_create_id(
                channel,
                &mut ep.id,
                ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            )
        } != 0
        {
            return Err(os_err("rdma_create_id"));
        }
        let (mut dst, _) = sockaddr_of(peer);
        // SAFETY: id is live; dst is a valid sockaddr for the call.
        if unsafe {
            rdma_resolve_addr(
                ep.id,
                ptr::null_mut(),
                &mut dst as *mut _ as *mut libc::sockaddr,
                ms,
            )
        } != 0
        {
            return Err(os_err("rdma_resolve_addr"));
        }
        expect_event(channel, rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED)?;
        // SAFETY: id is live.
        if unsafe { rdma_resolve_route(ep.id, ms) } != 0 {
            return Err(os_err("rdma_resolve_route"));
        }
        expect_event(channel, rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED)?;
        // SAFETY: after route resolution the id has a verbs context.
        let verbs = unsafe { (*ep.id).verbs };
        // SAFETY: verbs is live; the CQ is destroyed in Drop.
        ep.cq = unsafe { ibv_create_cq(verbs, 256, ptr::null_mut(), ptr::null_mut(), 0) };
        if ep.cq.is_null() {
            return Err(os_err("ibv_create_cq"));
        }
        // SAFETY: zeroed init attributes are valid; fields set below.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = ep.cq;
        init.recv_cq = ep.cq;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = 128;
        init.cap.max_recv_wr = 1;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: id is live; a null pd means the id's default pd.
        if unsafe { rdma_create_qp(ep.id, ptr::null_mut(), &mut init) } != 0 {
            return Err(os_err("rdma_create_qp"));
        }
        // SAFETY: zeroed connection parameters are valid; set below.
        let mut param: rdma_conn_param = unsafe { std::mem::zeroed() };
        param.initiator_depth = 16;
        param.responder_resources = 16;
        param.retry_count = 7;
        // SAFETY: id has a QP now.
        if unsafe { rdma_connect(ep.id, &mut param) } != 0 {
            return Err(os_err("rdma_connect"));
        }
        expect_event(channel, rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED)?;
        Ok(ep)
    }

    /// Posts one signaled one-sided operation and waits for its completion.
    fn one_sided(
        &self,
        opcode: ibv_wr_opcode::Type,
        local: (u64, u32, u32),
        remote: (u64, u32),
    ) -> Result<(), TransportError> {
        let mut sge = ibv_sge {
            addr: local.0,
            length: local.1,
            lkey: local.2,
        };
        // SAFETY: zeroed work request is valid; fields set below.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = 1;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma = rdma_t {
            remote_addr: remote.0,
            rkey: remote.1,
        };
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is connected; sge and wr outlive the call.
        if unsafe { ibv_post_send((*self.id).qp, &mut wr, &mut bad) } != 0 {
            return Err(os_err("ibv_post_send"));
        }
        // SAFETY: zeroed completion is valid.
        let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: the CQ is live.
            let n = unsafe { ibv_poll_cq(self.cq, 1, &mut wc) };
            if n < 0 {
                return Err(os_err("ibv_poll_cq"));
            }
            if n == 1 {
                break;
            }
            std::hint::spin_loop();
        }
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(TransportError::Protocol(format!(
                "rdma completion status {}",
                wc.status
            )));
        }
        Ok(())
    }
}

/// A memory region registered for this plane's client buffers;
/// deregistered when dropped.
struct Mr(*mut ibv_mr);

// SAFETY: an MR is an opaque handle.
unsafe impl Send for Mr {}

impl Mr {
    /// Registers `[buf, buf + len)` with the endpoint's protection domain.
    fn new(ep: &Endpoint, buf: *const u8, len: usize) -> Result<Mr, TransportError> {
        let access = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0 as i32;
        // SAFETY: the id's pd is live; the range is the caller's memory,
        // mapped for as long as the region lives (the callers' contract).
        let mr = unsafe { ibv_reg_mr((*ep.id).pd, buf as *mut _, len, access) };
        if mr.is_null() {
            return Err(os_err("ibv_reg_mr"));
        }
        Ok(Mr(mr))
    }

    fn lkey(&self) -> u32 {
        // SAFETY: a registered region.
        unsafe { (*self.0).lkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered by `Mr::new`, deregistered once, here.
        unsafe { ibv_dereg_mr(self.0) };
    }
}

/// The client side: one connected queue pair to a server's arena.
pub struct RdmaPlane {
    ep: Mutex<Endpoint>,
    remote: RemoteArena,
    /// Ranges registered ahead, and their regions by handle (`None` once
    /// unregistered).
    registry: Mutex<(Registry, Vec<Option<Mr>>)>,
}

impl std::fmt::Debug for RdmaPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaPlane")
            .field("remote", &self.remote)
            .finish()
    }
}

impl RdmaPlane {
    /// Connects to the server's RDMA listener at `peer`, whose arena is
    /// `remote`. Fails with "no RDMA device" on hosts without one.
    pub fn connect(peer: SocketAddr, remote: RemoteArena) -> Result<RdmaPlane, TransportError> {
        devices()?;
        let ep = Endpoint::connect(peer, Duration::from_secs(2))?;
        Ok(RdmaPlane {
            ep: Mutex::new(ep),
            remote,
            registry: Mutex::new((Registry::default(), Vec::new())),
        })
    }

    /// Registers `[buf, buf + len)` ahead, for every transfer into or out
    /// of it until [`RdmaPlane::unregister`] or the plane's drop: for
    /// buffers that live long (a pool of KV blocks), which then skip a
    /// registration per transfer. Refused when it overlaps a range already
    /// registered.
    ///
    /// # Safety
    /// The memory MUST stay mapped (not freed, not unmapped) until it is
    /// unregistered or the plane is dropped: the registration pins the
    /// pages it found, and transfers through it go to those pages.
    pub unsafe fn register(&self, buf: *const u8, len: usize) -> Result<(), TransportError> {
        let ep = self.ep.lock();
        let mr = Mr::new(&ep, buf, len)?;
        let mut reg = self.registry.lock();
        let handle = reg.1.len();
        reg.0
            .insert(buf as u64, len as u64, mr.lkey(), handle)
            .map_err(TransportError::Descriptor)?;
        reg.1.push(Some(mr));
        Ok(())
    }

    /// Forgets the registration starting at `buf`; false when there is none.
    pub fn unregister(&self, buf: *const u8) -> bool {
        let mut reg = self.registry.lock();
        match reg.0.remove(buf as u64) {
            // Dropping the region deregisters it.
            Some(handle) => reg.1[handle].take().is_some(),
            None => false,
        }
    }

    fn transfer(
        &self,
        d: &Descriptor,
        buf: *mut u8,
        len: usize,
        write: bool,
    ) -> Result<(), TransportError> {
        let remote = self.remote.address_of(d)?;
        if len == 0 {
            return Ok(());
        }
        let ep = self.ep.lock();
        let registered = self.registry.lock().0.lookup(buf as u64, len as u64);
        // Not registered ahead: registered for this transfer only, and
        // deregistered (the drop) once its completion is in.
        let once;
        let lkey = match registered {
            Some(k) => k,
            None => {
                once = Mr::new(&ep, buf, len)?;
                once.lkey()
            }
        };
        let op = if write {
            ibv_wr_opcode::IBV_WR_RDMA_WRITE
        } else {
            ibv_wr_opcode::IBV_WR_RDMA_READ
        };
        // One work request moves at most 2^31 bytes.
        let mut off = 0usize;
        while off < len {
            let n = (len - off).min(1 << 30);
            ep.one_sided(
                op,
                (buf as u64 + off as u64, n as u32, lkey),
                (remote + off as u64, self.remote.rkey),
            )?;
            off += n;
        }
        Ok(())
    }
}

impl Drop for RdmaPlane {
    fn drop(&mut self) {
        // The regions registered ahead go first: they belong to the
        // endpoint's protection domain, which the fields' drop (the
        // endpoint is declared first) would free before them.
        self.registry.get_mut().1.clear();
    }
}

impl DataPlane for RdmaPlane {
    fn kind(&self) -> Kind {
        Kind::Rdma
    }

    async fn write(&self, blocks: &[(Descriptor, &[u8])]) -> Result<(), TransportError> {
        check_lengths(Kind::Rdma, blocks.iter().map(|(d, b)| (d, b.len())))?;
        for (d, b) in blocks {
            self.transfer(d, b.as_ptr() as *mut u8, b.len(), true)?;
        }
        Ok(())
    }

    async fn read(&self, blocks: &mut [(Descriptor, &mut [u8])]) -> Result<(), TransportError> {
        check_lengths(Kind::Rdma, blocks.iter().map(|(d, b)| (d, b.len())))?;
        for (d, b) in blocks.iter_mut() {
            self.transfer(d, b.as_mut_ptr(), b.len(), false)?;
        }
        Ok(())
    }
}

/// The server side: the arena registered as one memory region, and an
/// rdma_cm listener that gives each connecting client an RC queue pair (the
/// clients then READ and WRITE the arena one-sidedly; the server posts
/// nothing).
pub struct RdmaServer {
    remote: RemoteArena,
    _thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for RdmaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaServer")
            .field("remote", &self.remote)
            .finish()
    }
}

struct Listener {
    channel: *mut rdma_event_channel,
    id: *mut rdma_cm_id,
    pd: *mut ibv_pd,
    mr: *mut ibv_mr,
    arena: std::sync::Arc<crate::Arena>,
}

// SAFETY: the verbs handles are used by the listener thread only.
unsafe impl Send for Listener {}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: each handle is null or ours, freed once, in reverse order.
        unsafe {
            if !self.mr.is_null() {
                ibv_dereg_mr(self.mr);
            }
            if !self.pd.is_null() {
                ibv_dealloc_pd(self.pd);
            }
            if !self.id.is_null() {
                rdma_destroy_id(self.id);
            }
            if !self.channel.is_null() {
                rdma_destroy_event_channel(self.channel);
            }
        }
    }
}

impl RdmaServer {
    /// Registers `arena` and listens on `bind` (the data port's address).
    /// Fails with "no RDMA device" on hosts without one.
    pub fn start(
        bind: SocketAddr,
        arena: std::sync::Arc<crate::Arena>,
    ) -> Result<RdmaServer, TransportError> {
        devices()?;
        // SAFETY: fresh channel; freed by Listener's Drop.
        let channel = unsafe { rdma_create_event_channel() };
        if channel.is_null() {
            return Err(os_err("rdma_create_event_channel"));
        }
        let mut l = Listener {
            channel,
            id: ptr::null_mut(),
            pd: ptr::null_mut(),
            mr: ptr::null_mut(),
            arena,
        };
        // SAFETY: channel is live.
        if unsafe {
            rdma_create_id(
                channel,
                &mut l.id,
                ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            )
        } != 0
        {
            return Err(os_err("rdma_create_id"));
        }
        let (mut addr, _) = sockaddr_of(bind);
        // SAFETY: id is live; addr is a valid sockaddr.
        if unsafe { rdma_bind_addr(l.id, &mut addr as *mut _ as *mut libc::sockaddr) } != 0 {
            return Err(os_err("rdma_bind_addr"));
        }
        // SAFETY: bound ids carry the device's verbs context (null when the
        // address is not on an RDMA device).
        let verbs = unsafe { (*l.id).verbs };
        if verbs.is_null() {
            return Err(TransportError::Unavailable(format!(
                "{bind} is not on an RDMA device"
            )));
        }
        // SAFETY: verbs is live; the pd is freed in Drop.
        l.pd = unsafe { ibv_alloc_pd(verbs) };
        if l.pd.is_null() {
            return Err(os_err("ibv_alloc_pd"));
        }
        let access = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0 as i32;
        let base = l.arena.base_ptr();
        // SAFETY: the arena mapping lives as long as the Listener holds it.
        l.mr = unsafe { ibv_reg_mr(l.pd, base as *mut _, l.arena.size() as usize, access) };
        if l.mr.is_null() {
            return Err(os_err("ibv_reg_mr (arena)"));
        }
        // SAFETY: id is bound.
        if unsafe { rdma_listen(l.id, 64) } != 0 {
            return Err(os_err("rdma_listen"));
        }
        let remote = RemoteArena {
            base: base as u64,
            // SAFETY: a valid MR.
            rkey: unsafe { (*l.mr).rkey },
            size: l.arena.size(),
        };
        let thread = std::thread::Builder::new()
            .name("tidepool-rdma-cm".into())
            .spawn(move || accept_loop(l))?;
        Ok(RdmaServer {
            remote,
            _thread: thread,
        })
    }

    /// What clients need to reach the arena.
    pub fn remote(&self) -> RemoteArena {
        self.remote
    }
}

/// Accepts connection requests with a queue pair each; tears them down on
/// disconnect.
fn accept_loop(l: Listener) {
    loop {
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel lives as long as `l`.
        if unsafe { rdma_get_cm_event(l.channel, &mut ev) } != 0 {
            tracing::warn!(
                "rdma_cm event channel failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: a valid event until acked.
        let (kind, id) = unsafe { ((*ev).event, (*ev).id) };
        match kind {
            rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST => {
                // SAFETY: a new id for the request, on the listener's device.
                let cq =
                    unsafe { ibv_create_cq((*id).verbs, 16, ptr::null_mut(), ptr::null_mut(), 0) };
                // SAFETY: zeroed init attributes are valid.
                let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
                init.send_cq = cq;
                init.recv_cq = cq;
                init.qp_type = ibv_qp_type::IBV_QPT_RC;
                init.cap.max_send_wr = 1;
                init.cap.max_recv_wr = 1;
                init.cap.max_send_sge = 1;
                init.cap.max_recv_sge = 1;
                // SAFETY: zeroed parameters are valid.
                let mut param: rdma_conn_param = unsafe { std::mem::zeroed() };
                param.initiator_depth = 16;
                param.responder_resources = 16;
                // SAFETY: id, pd and cq are live.
                let ok = !cq.is_null()
                    && unsafe { rdma_create_qp(id, l.pd, &mut init) } == 0
                    && unsafe { rdma_accept(id, &mut param) } == 0;
                if !ok {
                    tracing::warn!(
                        "rdma: refusing a connection: {}",
                        std::io::Error::last_os_error()
                    );
                    // SAFETY: rejecting the request we were handed.
                    unsafe { rdma_reject(id, ptr::null(), 0) };
                }
            }
            rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED => {
                // SAFETY: the id's QP was created above; the CQ leaks with
                // the connection's lifetime bookkeeping kept minimal.
                unsafe {
                    rdma_destroy_qp(id);
                }
            }
            _ => {}
        }
        // SAFETY: acknowledging the event we got.
        unsafe { rdma_ack_cm_event(ev) };
        if kind == rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED {
            // SAFETY: acked; the id is ours to destroy now.
            unsafe { rdma_destroy_id(id) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_arenas_round_trip_and_bad_ones_are_refused() {
        let a = RemoteArena {
            base: 0x7f00_0000_1000,
            rkey: 0xdead_beef,
            size: 1 << 30,
        };
        assert_eq!(RemoteArena::decode(&a.encode()).unwrap(), a);
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "x:1:1",
            "1:100000000:1",
            "ffffffffffffffff:1:2",
        ] {
            assert!(RemoteArena::decode(bad).is_err(), "{bad}");
        }
        let d = Descriptor {
            kind: Kind::Rdma,
            offset: 4096,
            len: 10,
            token: 3,
        };
        assert_eq!(a.address_of(&d).unwrap(), a.base + 4096);
        let far = Descriptor {
            offset: a.size - 5,
            ..d
        };
        assert!(a.address_of(&far).is_err());
        let wrap = Descriptor {
            offset: u64::MAX,
            ..d
        };
        assert!(a.address_of(&wrap).is_err());
    }

    #[test]
    fn the_registry_finds_covering_regions_and_refuses_overlaps() {
        let mut r = Registry::default();
        assert_eq!(r.lookup(0x1000, 1), None);
        r.insert(0x1000, 0x2000, 7, 0).unwrap();
        r.insert(0x8000, 0x1000, 9, 1).unwrap();
        assert_eq!(r.lookup(0x1000, 0x2000), Some(7));
        assert_eq!(r.lookup(0x2fff, 1), Some(7));
        assert_eq!(r.lookup(0x2fff, 2), None, "runs past the region");
        assert_eq!(r.lookup(0x8800, 0x100), Some(9));
        assert_eq!(r.lookup(0x4000, 1), None);
        assert_eq!(r.lookup(u64::MAX, 2), None);
        assert!(r.insert(0x2000, 0x100, 1, 2).is_err());
        assert!(r.insert(0x0, 0x1001, 1, 2).is_err());
        assert!(r.insert(0x7000, 0x1001, 1, 2).is_err());
        assert!(r.insert(0x5000, 0, 1, 2).is_err());
        r.insert(0x3000, 0x5000, 8, 2).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.remove(0x1000), Some(0));
        assert_eq!(r.lookup(0x1000, 1), None);
        assert_eq!(r.remove(0x1000), None);
    }

    #[test]
    fn without_a_device_discovery_and_connect_say_so() {
        match devices() {
            Ok(names) => {
                // A host with RDMA: at least one named device.
                assert!(!names.is_empty());
                eprintln!("RDMA devices here: {names:?}");
            }
            Err(e) => {
                assert!(matches!(e, TransportError::Unavailable(_)));
                assert_eq!(e.to_string(), "no RDMA device");
                let remote = RemoteArena {
                    base: 0,
                    rkey: 1,
                    size: 4096,
                };
                let started = std::time::Instant::now();
                let err = RdmaPlane::connect("127.0.0.1:1".parse().unwrap(), remote).unwrap_err();
                assert_eq!(err.to_string(), "no RDMA device");
                assert!(started.elapsed() < Duration::from_secs(5));
            }
        }
    }

    #[test]
    fn a_server_without_a_device_says_so() {
        if devices().is_ok() {
            return; // a host with RDMA: the listener would start
        }
        let arena = crate::Arena::new(1 << 20).unwrap();
        let e = RdmaServer::start("127.0.0.1:0".parse().unwrap(), arena).unwrap_err();
        assert_eq!(e.to_string(), "no RDMA device");
    }

    #[test]
    fn connection_setup_errors_are_reported_not_hung() {
        // Straight to rdma_cm (past the device check): with no device the
        // address cannot resolve; with one, nothing listens on port 1.
        let started = std::time::Instant::now();
        let r = Endpoint::connect("127.0.0.1:1".parse().unwrap(), Duration::from_millis(500));
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
