"""LMCache's remote storage on tidepool, through LMCache's plugin loader:
chunks put, a pinned lookup, the read under its lease.

Serving with it (LMCache 0.5.6 under vLLM), lmcache.yaml:

    chunk_size: 256
    local_cpu: true
    max_local_cpu_size: 20
    remote_url: "tidepool://127.0.0.1:6379"
    remote_serde: "naive"
    remote_storage_plugins: ["tidepool"]
    extra_config:
      remote_storage_plugin.tidepool.module_path: tidepool.lmcache
      remote_storage_plugin.tidepool.class_name: TidepoolConnectorAdapter
      save_chunk_meta: false

    LMCACHE_CONFIG_FILE=lmcache.yaml vllm serve Qwen/Qwen3-8B \\
        --kv-transfer-config '{"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}'

Runs against $TIDEPOOL_ADDR (default 127.0.0.1:6379); exits 0 when the chunks
came back intact, 77 when lmcache is not installed here.
"""

import asyncio
import os
import sys
import threading
import uuid

try:
    import torch
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.metadata import LMCacheMetadata
    from lmcache.v1.storage_backend.connector import CreateConnector
    from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
except Exception as e:
    print(f"lmcache is not installed: {e}")
    sys.exit(77)

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")


def main():
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=16, local_cpu=False, max_local_cpu_size=0.05,
        remote_url=f"tidepool://{ADDR}", remote_serde="naive",
        remote_storage_plugins=["tidepool"],
        extra_config={
            "remote_storage_plugin.tidepool.module_path": "tidepool.lmcache",
            "remote_storage_plugin.tidepool.class_name": "TidepoolConnectorAdapter",
            "save_chunk_meta": False,
        },
    )
    metadata = LMCacheMetadata(
        model_name="example", world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
        kv_dtype=torch.bfloat16, kv_shape=(4, 2, 16, 4, 64), chunk_size=16,
    )
    cpu = LocalCPUBackend(config, metadata)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    remote = CreateConnector(config.remote_url, loop, cpu, config, metadata)
    inner = remote._connector
    keys = [CacheEngineKey("example", 1, 0, uuid.uuid4().int >> 65, torch.bfloat16) for _ in range(3)]
    chunks = []
    for _ in keys:
        obj = cpu.allocate(inner.meta_shapes, inner.meta_dtypes, inner.meta_fmt)
        obj.tensor.copy_(torch.randn(obj.tensor.shape).to(obj.tensor.dtype))
        chunks.append(obj)
    wants = [c.tensor.clone() for c in chunks]
    run(remote.batched_put(keys, chunks))

    # The scheduler's lookup: one KV.MATCH, pinned under a lease...
    hit = run(remote.batched_async_contains("req-1", keys, pin=True))
    assert hit == 3, hit
    # ...and the read that follows gives the lease back.
    got = run(remote.batched_get_non_blocking("req-1", keys))
    assert len(got) == 3 and all(torch.equal(g.tensor, w) for g, w in zip(got, wants))
    print(f"{hit} chunks of 16 tokens stored, found and read back through tidepool")
    for g in got:
        g.ref_count_down()
    run(remote.close())
    print("lmcache_plugin: ok")


if __name__ == "__main__":
    main()
