"""A vLLM KV connector over tidepool (vLLM's KVConnectorBase_V1, vLLM 0.34).

    vllm serve Qwen/Qwen3-8B --kv-transfer-config '{
        "kv_connector": "TidepoolConnector",
        "kv_connector_module_path": "tidepool.vllm",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"tidepool_addr": "127.0.0.1:6379"}}'

Scheduler side: for a new request, ``get_num_new_matched_tokens`` asks
tidepool how many of the prompt's leading blocks are stored with one
``KV.MATCHTOKENS`` (the server hashes the token ids into the chain, as
``tidepool.chain_keys`` does) under a lease, so the blocks cannot be evicted
before the workers read them; the lease is given back once the step that
loads them is over. Worker side: blocks computed by a step are saved in
``wait_for_save`` (each vLLM block, all its layers, is one tidepool block,
chained under the block before it), and blocks to load are read in
``start_load_kv`` into host buffers over the data plane and copied into the
paged KV cache. A block that could not be read is reported through
``get_block_ids_with_load_errors`` so vLLM recomputes it.

Blocks are named per tensor-parallel rank: the chain's seed is
``vllm|{model}|tp{size}|rank{rank}|bs{block size}``; the scheduler matches
rank 0's chain.

Extra-config keys: ``tidepool_addr`` (default ``$TIDEPOOL_ADDR``, else
127.0.0.1:6379), ``tidepool_plane`` ("auto"), ``tidepool_lease_ms``
(30000).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

import tidepool

logger = logging.getLogger(__name__)


@dataclass
class Transfer:
    """Blocks `first`..`last` (exclusive) of a request's prompt, which live
    in vLLM blocks `block_ids[first:last]`."""

    req_id: str
    token_ids: List[int]  # the prompt's tokens, as far as `last` reaches
    block_ids: List[int]
    first: int
    last: int


@dataclass
class TidepoolConnectorMetadata(KVConnectorMetadata):
    loads: List[Transfer] = field(default_factory=list)
    saves: List[Transfer] = field(default_factory=list)


def _layer_order(name: str):
    """Layers in model order: by the numbers in their names."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class TidepoolConnector(KVConnectorBase_V1):
    """vLLM's external KV cache on a tidepool server or cluster."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        addr = extra.get("tidepool_addr") or os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
        self.client = tidepool.Client(addr, plane=str(extra.get("tidepool_plane", "auto")))
        self.lease_ms = int(extra.get("tidepool_lease_ms", 30_000))
        self.block_size = vllm_config.cache_config.block_size
        model = str(vllm_config.model_config.model)
        tp = vllm_config.parallel_config.tensor_parallel_size
        rank = 0 if role == KVConnectorRole.SCHEDULER else self._tp_rank()
        self.seed = f"vllm|{model}|tp{tp}|rank{rank}|bs{self.block_size}".encode()
        # Scheduler: matched blocks and leases by request, loads for the
        # next step, leases to give back once that step is over, and what
        # each running request has saved.
        self._matched: Dict[str, Tuple[int, Optional[int]]] = {}
        self._to_load: List[Transfer] = []
        self._leases_in_flight: List[int] = []
        self._leases_loaded: List[int] = []
        self._running: Dict[str, Transfer] = {}
        # Worker: the layers' KV of blocks being saved, by request.
        self._saving: Dict[str, Dict[str, torch.Tensor]] = {}
        self._load_errors: set = set()
        self._kv_caches: Dict[str, torch.Tensor] = {}

    @staticmethod
    def _tp_rank() -> int:
        try:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            return get_tensor_model_parallel_rank()
        except Exception:  # not initialized (one process, tests)
            return 0

    def _keys(self, t: Transfer) -> List[bytes]:
        return tidepool.chain_keys(self.seed, self.block_size, t.token_ids[: t.last * self.block_size])

    # -- scheduler side ----------------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        tokens = list(request.prompt_token_ids or [])
        # Leave at least one prompt token to compute: its logits are needed.
        full = (len(tokens) - 1) // self.block_size
        if full * self.block_size <= num_computed_tokens:
            return 0, False
        try:
            hit = self.client.match_tokens(
                self.seed, self.block_size, tokens[: full * self.block_size], lease_ms=self.lease_ms
            )
        except tidepool.TidepoolError as e:
            logger.warning("tidepool lookup failed, computing instead: %s", e)
            return 0, False
        old = self._matched.pop(request.request_id, None)
        if old and old[1] is not None:
            self._release(old[1])
        if hit.matched * self.block_size <= num_computed_tokens:
            if hit.lease is not None:
                self._release(hit.lease)
            return 0, False
        self._matched[request.request_id] = (hit.matched, hit.lease)
        return hit.matched * self.block_size - num_computed_tokens, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int):
        matched, lease = self._matched.pop(request.request_id, (0, None))
        if num_external_tokens <= 0:
            if lease is not None:
                self._release(lease)
            return
        block_ids = list(blocks.get_block_ids()[0])
        first = request.num_computed_tokens // self.block_size
        self._to_load.append(
            Transfer(
                request.request_id,
                list(request.prompt_token_ids)[: matched * self.block_size],
                block_ids,
                first,
                matched,
            )
        )
        if lease is not None:
            self._leases_in_flight.append(lease)

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        # The workers ran the step before, and its loads: their leases go.
        # This step's (taken since) are given back at the next step.
        for lease in self._leases_loaded:
            self._release(lease)
        self._leases_loaded, self._leases_in_flight = self._leases_in_flight, []
        meta = TidepoolConnectorMetadata(loads=self._to_load)
        loaded = {t.req_id: t.last for t in self._to_load}
        self._to_load = []
        scheduled = scheduler_output.num_scheduled_tokens
        for req in scheduler_output.scheduled_new_reqs:
            tokens = list(req.prompt_token_ids or [])
            state = Transfer(req.req_id, tokens, list(req.block_ids[0]), 0, 0)
            # Blocks from vLLM's own cache or just loaded are stored already.
            state.last = max(loaded.get(req.req_id, 0), req.num_computed_tokens // self.block_size)
            self._running[req.req_id] = state
            self._plan_save(meta, state, req.num_computed_tokens + scheduled.get(req.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._running.get(req_id)
            if state is None:
                continue
            if cached.new_block_ids[i] is not None:
                state.block_ids.extend(cached.new_block_ids[i][0])
            self._plan_save(meta, state, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        for req_id in scheduler_output.finished_req_ids:
            self._running.pop(req_id, None)
        return meta

    def _plan_save(self, meta, state: Transfer, computed: int):
        """Saves the prompt blocks that `computed` tokens complete."""
        done = min(computed, len(state.token_ids)) // self.block_size
        if done > state.last:
            tokens = state.token_ids[: done * self.block_size]
            meta.saves.append(Transfer(state.req_id, tokens, list(state.block_ids), state.last, done))
            state.last = done

    def request_finished(self, request, block_ids):
        self._running.pop(request.request_id, None)
        _, lease = self._matched.pop(request.request_id, (0, None))
        if lease is not None:
            self._release(lease)
        return False, None

    def _release(self, lease: int):
        try:
            self.client.release(lease)
        except tidepool.TidepoolError as e:
            logger.debug("tidepool lease %d: %s", lease, e)

    # -- worker side -----------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Dict[str, torch.Tensor]):
        self._kv_caches = dict(kv_caches)

    def _layers(self, forward_context) -> Dict[str, torch.Tensor]:
        layers = {}
        for name, layer in getattr(forward_context, "no_compile_layers", {}).items():
            cache = getattr(layer, "kv_cache", None)
            if isinstance(cache, torch.Tensor):
                layers[name] = cache
        return layers or self._kv_caches

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, TidepoolConnectorMetadata) or not meta.loads:
            return
        layers = self._layers(forward_context)
        names = sorted(layers, key=_layer_order)
        # One vLLM block of every layer, back to back: one tidepool block.
        per_layer = [layers[n][0].numel() * layers[n].element_size() for n in names]
        block_bytes = sum(per_layer)
        for t in meta.loads:
            keys = self._keys(t)[t.first : t.last]
            bufs = [torch.empty(block_bytes, dtype=torch.uint8) for _ in keys]
            try:
                got = self.client.get_many_into(keys, bufs)
            except tidepool.TidepoolError as e:
                logger.warning("tidepool load of %d blocks failed: %s", len(keys), e)
                got = [None] * len(keys)
            for j, (buf, n) in enumerate(zip(bufs, got)):
                block = t.block_ids[t.first + j]
                if n != block_bytes:
                    # This block and the rest of the prefix are recomputed.
                    self._load_errors.update(t.block_ids[t.first + j : t.last])
                    break
                at = 0
                for name, size in zip(names, per_layer):
                    dst = layers[name][block]
                    src = buf[at : at + size].view(dst.dtype).view(dst.shape)
                    dst.copy_(src, non_blocking=False)
                    at += size

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv loads every layer before the forward

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, TidepoolConnectorMetadata):
            return
        for t in meta.saves:
            idx = torch.tensor(t.block_ids[t.first : t.last], device=kv_layer.device)
            self._saving.setdefault(t.req_id, {})[layer_name] = kv_layer.index_select(0, idx).cpu()

    def wait_for_save(self):
        meta = self._get_connector_metadata()
        if not isinstance(meta, TidepoolConnectorMetadata):
            return
        for t in meta.saves:
            saved = self._saving.pop(t.req_id, {})
            if not saved:
                continue
            names = sorted(saved, key=_layer_order)
            keys = self._keys(t)
            blocks = []
            for j in range(t.last - t.first):
                parts = [saved[n][j].contiguous().view(-1).view(torch.uint8) for n in names]
                blocks.append((keys[t.first + j], torch.cat(parts)))
            parent = keys[t.first - 1] if t.first > 0 else None
            try:
                out = self.client.put_many(blocks, chain=True, parent=parent)
                if parent is not None and out and getattr(out[0], "code", None) == "NOPARENT":
                    out = self.client.put_many(blocks, chain=True)
                refused = [e for e in out if e is not None]
                if refused:
                    logger.warning("tidepool refused %d of %d blocks: %s", len(refused), len(out), refused[0])
            except tidepool.TidepoolError as e:
                logger.warning("tidepool save of %d blocks failed: %s", len(blocks), e)
        self._saving.clear()

    def get_block_ids_with_load_errors(self) -> set:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        self.client.close()
