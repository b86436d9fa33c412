"""LMCache remote storage on tidepool, as an LMCache remote-storage plugin.

LMCache configuration (YAML, or the matching LMCACHE_* variables):

    chunk_size: 256
    remote_url: "tidepool://127.0.0.1:6379"
    remote_serde: "naive"
    remote_storage_plugins: ["tidepool"]
    extra_config:
      remote_storage_plugin.tidepool.module_path: tidepool.lmcache
      remote_storage_plugin.tidepool.class_name: TidepoolConnectorAdapter
      save_chunk_meta: false

and vLLM started with ``--kv-transfer-config '{"kv_connector":
"LMCacheConnectorV1", "kv_role": "kv_both"}'`` and
``LMCACHE_CONFIG_FILE`` naming that file.

What it does beyond a Redis backend: a lookup of a request's chunks
(``batched_async_contains`` / ``batched_contains``) is one ``KV.MATCH``
that counts the leading chunks stored; when LMCache pins the lookup, the
match takes a lease on those chunks (``tidepool_lease_ms``, default 30 s),
so eviction cannot take them before the read that follows, and the read
(``batched_get_non_blocking`` under the same lookup id) gives it back.
Chunk bytes move over the data plane (shared memory on the same host,
else TCP) straight between LMCache's buffers and the server, and the
chunks of one batched put are chained, so the store evicts a prefix's tail
before its head.

``tidepool_addr`` in extra_config overrides the host:port of the URL;
``tidepool_plane`` picks the plane ("auto"). Built against LMCache 0.5.6
(lmcache/v1/storage_backend/connector/__init__.py, base_connector.py).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from lmcache.logging import init_logger
from lmcache.utils import CacheEngineKey
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.storage_backend.connector import ConnectorAdapter, ConnectorContext
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

import tidepool

logger = init_logger(__name__)

DEFAULT_LEASE_MS = 30_000


def _addr(url: str, extra: dict) -> str:
    if extra.get("tidepool_addr"):
        return str(extra["tidepool_addr"])
    for scheme in ("tidepool://", "plugin://"):
        if url.startswith(scheme):
            rest = url[len(scheme) :].split("/", 1)[0]
            # plugin://tidepool names the plugin, not a server.
            if ":" in rest:
                return rest
    return "127.0.0.1:6379"


class TidepoolConnectorAdapter(ConnectorAdapter):
    """Makes a TidepoolConnector for ``tidepool://host:port`` (or
    ``plugin://tidepool``) remote URLs."""

    def __init__(self) -> None:
        super().__init__("tidepool://")

    def can_parse(self, url: str) -> bool:
        if url.startswith("plugin://"):
            return url.split("/")[2:3] == ["tidepool"]
        return url.startswith("tidepool://")

    def create_connector(self, context: ConnectorContext) -> RemoteConnector:
        extra = dict((context.config.extra_config if context.config else None) or {})
        return TidepoolConnector(
            _addr(context.url, extra),
            context.loop,
            context.local_cpu_backend,
            plane=str(extra.get("tidepool_plane", "auto")),
            lease_ms=int(extra.get("tidepool_lease_ms", DEFAULT_LEASE_MS)),
        )


class TidepoolConnector(RemoteConnector):
    """LMCache's RemoteConnector over a tidepool client."""

    def __init__(self, addr, loop, local_cpu_backend, plane="auto", lease_ms=DEFAULT_LEASE_MS):
        super().__init__(local_cpu_backend.config, local_cpu_backend.metadata)
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.lease_ms = lease_ms
        self.client = tidepool.Client(addr, plane=plane)
        self.aclient = self.client.aio()
        # Leases taken by pinned lookups, by lookup id, until their read.
        self._leases: Dict[str, int] = {}
        logger.info("LMCache remote storage on tidepool %s (plane %s)", addr, self.client.data_plane)

    # -- single chunks -------------------------------------------------------

    async def exists(self, key: CacheEngineKey) -> bool:
        return (await self.aclient.exists([key.to_string()]))[0] is not None

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return self.client.exists([key.to_string()])[0] is not None

    def _allocate(self) -> Optional[MemoryObj]:
        return self.local_cpu_backend.allocate(self.meta_shapes, self.meta_dtypes, self.meta_fmt)

    def _finish(self, obj: MemoryObj, got: Optional[int]) -> Optional[MemoryObj]:
        """The chunk read into `obj` (`got` bytes), or None for a miss."""
        if got is None or got == 0:
            obj.ref_count_down()
            return None
        if got != self.full_chunk_size_bytes:
            return self.reshape_partial_chunk(obj, got)
        return obj

    async def get(self, key: CacheEngineKey) -> Optional[MemoryObj]:
        obj = self._allocate()
        if obj is None:
            logger.warning("no LMCache buffer free for a tidepool get")
            return None
        try:
            got = await self.aclient.get_into(key.to_string(), obj.byte_array)
        except Exception:
            obj.ref_count_down()
            raise
        return self._finish(obj, got)

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj):
        await self.aclient.put(key.to_string(), memory_obj.byte_array)

    async def list(self) -> List[str]:
        keys, cursor = [], b"0"
        while True:
            cursor, found = await self.aclient.command("SCAN", cursor, "COUNT", 1000)
            keys.extend(k.decode(errors="replace") for k in found)
            if cursor in (b"0", "0"):
                return keys

    async def close(self):
        for lease in list(self._leases.values()):
            try:
                await self.aclient.release(lease)
            except tidepool.TidepoolError:
                pass
        self._leases.clear()
        self.aclient.close()
        self.client.close()

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        try:
            return 0 if await self.aclient.command("PING") == "PONG" else 1
        except tidepool.TidepoolError:
            return 1

    def remove_sync(self, key: CacheEngineKey) -> bool:
        return self.client.delete([key.to_string()]) == 1

    # -- batches -----------------------------------------------------------------

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        objs = [self._allocate() for _ in keys]
        if any(o is None for o in objs):
            for o in objs:
                if o is not None:
                    o.ref_count_down()
            logger.warning("no LMCache buffers free for a tidepool get of %d chunks", len(keys))
            return [None] * len(keys)
        try:
            got = await self.aclient.get_many_into([k.to_string() for k in keys], [o.byte_array for o in objs])
        except Exception:
            for o in objs:
                o.ref_count_down()
            raise
        return [self._finish(o, n) for o, n in zip(objs, got)]

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List[CacheEngineKey], memory_objs: List[MemoryObj]):
        blocks = [(k.to_string(), o.byte_array) for k, o in zip(keys, memory_objs)]
        # A batch is a request's chunks in order: chained, each under the
        # one before, so eviction takes a prefix's tail first.
        out = await self.aclient.put_many(blocks, chain=True)
        refused = [e for e in out if e is not None]
        if refused:
            logger.warning("tidepool refused %d of %d chunks: %s", len(refused), len(out), refused[0])

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List[CacheEngineKey]) -> int:
        return self.client.match_prefix([k.to_string() for k in keys]).matched

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey], pin: bool = False) -> int:
        names = [k.to_string() for k in keys]
        if not pin:
            return (await self.aclient.match_prefix(names)).matched
        hit = await self.aclient.match_prefix(names, lease_ms=self.lease_ms)
        old = self._leases.pop(lookup_id, None)
        if old is not None:
            await self.aclient.release(old)
        if hit.lease is not None:
            self._leases[lookup_id] = hit.lease
        return hit.matched

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str, keys: List[CacheEngineKey]) -> List[MemoryObj]:
        """The leading chunks read, under the lease of the pinned lookup of
        the same id (given back here)."""
        try:
            objs = await self.batched_get(keys)
        finally:
            lease = self._leases.pop(lookup_id, None)
            if lease is not None:
                await self.aclient.release(lease)
        out = []
        for i, o in enumerate(objs):
            if o is None:
                for rest in objs[i + 1 :]:
                    if rest is not None:
                        rest.ref_count_down()
                break
            out.append(o)
        return out

    def __repr__(self) -> str:
        return f"<TidepoolConnector plane={self.client.data_plane}>"


__all__ = ["TidepoolConnectorAdapter", "TidepoolConnector"]
