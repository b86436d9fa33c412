"""SGLang HiCache storage backend over tidepool (SGLang's L3 tier).

Load it with SGLang's dynamic backend:

    python -m sglang.launch_server --model-path MODEL \\
        --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "tidepool",
            "module_path": "tidepool.sglang", "class_name": "TidepoolHiCacheStorage",
            "interface_v1": 1, "tidepool_addr": "127.0.0.1:6379"}'

With ``interface_v1`` SGLang calls the zero-copy ``batch_get_v1`` /
``batch_set_v1``: pages move between SGLang's host KV pool and the store's
data plane (shared memory on the same host, else TCP) with no copy in
Python. ``batch_exists`` answers how many leading pages are stored with one
``KV.MATCH``. The pages of one write are stored as a chain (each under the
page before it, the first under the last page of ``prefix_keys`` when that
is stored), so the store evicts a prefix's tail before its head and a hit
is always a whole prefix.

Each page is one block per buffer SGLang's host pool gives for it (page
first MHA: K and V; layer first: K and V of every layer; MLA: one), named
``{key_prefix}{page hash}/{rank}/{buffer}``; ``rank`` separates tensor- and
pipeline-parallel shards (MLA pages are shared by the tensor-parallel
ranks, and only the storage writer among them writes).

Extra-config keys: ``tidepool_addr`` (default ``$TIDEPOOL_ADDR``, else
127.0.0.1:6379), ``tidepool_cluster`` (a list of seed addresses: cluster
mode), ``connections`` (4), ``plane`` ("auto"), ``key_prefix``
("sglang/{model}/").

Built against sglang 0.5.23 (sglang/srt/mem_cache/hicache_storage.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)

import tidepool

logger = logging.getLogger(__name__)


class TidepoolHiCacheStorage(HiCacheStorage):
    """HiCache L3 storage on a tidepool server or cluster."""

    def __init__(self, storage_config: Optional[HiCacheStorageConfig] = None, kwargs: Any = None):
        extra = dict((storage_config.extra_config if storage_config else None) or {})
        addr = extra.get("tidepool_addr") or os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
        options = {
            "connections": int(extra.get("connections", 4)),
            "plane": extra.get("plane", "auto"),
        }
        seeds = extra.get("tidepool_cluster")
        if seeds:
            self.client = tidepool.Client.connect_cluster(seeds, **options)
        else:
            self.client = tidepool.Client(addr, **options)
        model = "default"
        if storage_config is not None and storage_config.model_name:
            model = storage_config.model_name.replace("/", "-")
        self.key_prefix = extra.get("key_prefix", f"sglang/{model}/")
        self.v1 = bool(extra.get("interface_v1", 0))
        if storage_config is None:
            self.rank, self.writer = "0", True
        else:
            c = storage_config
            rank = "mla" if c.is_mla_model else f"tp{c.tp_rank}of{c.tp_size}"
            if c.pp_size > 1:
                rank += f".pp{c.pp_rank}of{c.pp_size}"
            if c.attn_cp_size > 1:
                rank += f".cp{c.attn_cp_rank}of{c.attn_cp_size}"
            if getattr(c, "dcp_size", 1) > 1:
                rank += f".dcp{c.dcp_rank}of{c.dcp_size}"
            self.rank, self.writer = rank, c.is_storage_writer
        self.mem_pool_host = None
        # Buffers per page, as the host pool lays a page out (v1 path).
        self.buffers = 1
        logger.info("HiCache storage on tidepool %s (plane %s)", addr, self.client.data_plane)

    # -- naming ------------------------------------------------------------

    def _names(self, page_key: str) -> List[str]:
        """The blocks of one page, in chain order: one per host-pool buffer
        (v1), else the page's flat bytes in one."""
        if not self.v1:
            return [self._flat(page_key)]
        return [f"{self.key_prefix}{page_key}/{self.rank}/{j}" for j in range(self.buffers)]

    def _flat(self, page_key: str) -> str:
        """The block of a page stored whole (the generic interface)."""
        return f"{self.key_prefix}{page_key}/{self.rank}/flat"

    def _blocks(self, keys: List[str]) -> List[str]:
        return [name for k in keys for name in self._names(k)]

    def _parent(self, extra_info: Optional[HiCacheStorageExtraInfo]) -> Optional[str]:
        prefix = extra_info.prefix_keys if extra_info is not None else None
        return self._names(prefix[-1])[-1] if prefix else None

    # -- host pool -----------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host):
        super().register_mem_pool_host(mem_pool_host)
        if self.v1:
            one_page = torch.arange(mem_pool_host.page_size, dtype=torch.int64)
            ptrs, _ = mem_pool_host.get_page_buffer_meta(one_page)
            self.buffers = len(ptrs)

    def _meta(self, keys: List[str], host_indices: torch.Tensor):
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        if len(ptrs) != len(keys) * self.buffers:
            raise ValueError(
                f"{len(keys)} pages but {len(ptrs)} buffers from the host pool "
                f"(expected {self.buffers} a page)"
            )
        return [int(p) for p in ptrs], [int(s) for s in sizes]

    # -- the v1 zero-copy interface -----------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        if not keys:
            return 0
        matched = self.client.match_prefix(self._blocks(keys)).matched
        return matched // (self.buffers if self.v1 else 1)

    def batch_get_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        if not keys:
            return []
        ptrs, sizes = self._meta(keys, host_indices)
        try:
            got = self.client.get_many_into_ptrs(self._blocks(keys), ptrs, sizes)
        except tidepool.TidepoolError as e:
            logger.warning("tidepool get of %d pages failed: %s", len(keys), e)
            return [False] * len(keys)
        n = self.buffers
        return [
            all(got[i * n + j] == sizes[i * n + j] for j in range(n)) for i in range(len(keys))
        ]

    def batch_set_v1(
        self,
        keys: List[str],
        host_indices: torch.Tensor,
        extra_info: Optional[HiCacheStorageExtraInfo] = None,
    ) -> List[bool]:
        if not keys:
            return []
        if not self.writer:
            return [True] * len(keys)
        ptrs, sizes = self._meta(keys, host_indices)
        return self._put(self._blocks(keys), len(keys), self._parent(extra_info), ptrs=(ptrs, sizes))

    def _put(self, blocks, pages, parent, ptrs=None, values=None) -> List[bool]:
        """Stores a batch's blocks as one chain (under `parent` when it is
        stored, else as a chain of its own); per page, whether all its
        blocks are stored."""

        def put(under):
            if ptrs is not None:
                return self.client.put_many_ptrs(blocks, ptrs[0], ptrs[1], chain=True, parent=under)
            return self.client.put_many(list(zip(blocks, values)), chain=True, parent=under)

        try:
            out = put(parent)
            if parent is not None and out and getattr(out[0], "code", None) == "NOPARENT":
                out = put(None)  # the prefix before this batch is gone
        except tidepool.TidepoolError as e:
            logger.warning("tidepool put of %d pages failed: %s", pages, e)
            return [False] * pages
        n = len(blocks) // pages
        return [all(r is None for r in out[i * n : (i + 1) * n]) for i in range(pages)]

    # -- the generic (copying) interface --------------------------------------

    def exists(self, key: str) -> bool:
        return self.client.exists([self._flat(key)])[0] is not None

    def get(self, key, target_location=None, target_sizes=None):
        out = self.batch_get([key], [target_location] if target_location is not None else None)
        return out[0]

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        names = [self._flat(k) for k in keys]
        if target_locations is None:
            data = self.client.get_many(names)
            return [None if d is None else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        lens = self.client.get_many_into(names, [t.view(torch.uint8).view(-1) for t in target_locations])
        return [t if n is not None else None for t, n in zip(target_locations, lens)]

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        if not self.writer:
            return True
        names = [self._flat(k) for k in keys]
        flat = [v.contiguous().view(torch.uint8).view(-1) for v in values]
        return all(self._put(names, len(keys), None, values=flat))

    def clear(self) -> None:
        """Deletes this backend's blocks (those under its key prefix)."""
        cursor = b"0"
        pattern = self.key_prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*"
        while True:
            cursor, found = self.client.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if found:
                self.client.delete(found)
            if cursor in (b"0", "0"):
                break

    def get_stats(self):
        return self.client.stats()

    def close(self) -> None:
        self.client.close()
