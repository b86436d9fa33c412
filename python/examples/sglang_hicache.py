"""SGLang's HiCache L3 on tidepool: the backend SGLang loads, driven here the
way SGLang's cache controller drives it (pages of a host KV pool written,
looked up, read back into other pages).

Serving with it (SGLang 0.5.23):

    python -m sglang.launch_server --model-path Qwen/Qwen3-8B \\
        --enable-hierarchical-cache --hicache-ratio 2 \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "tidepool",
            "module_path": "tidepool.sglang", "class_name": "TidepoolHiCacheStorage",
            "interface_v1": 1, "tidepool_addr": "127.0.0.1:6379"}'

Runs against $TIDEPOOL_ADDR (default 127.0.0.1:6379); exits 0 when the pages
came back intact, 77 when sglang is not installed here.
"""

import os
import sys
import uuid

try:
    import torch
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig, HiCacheStorageExtraInfo
    from sglang.srt.mem_cache.storage import StorageBackendFactory
except ImportError as e:
    print(f"sglang is not installed: {e}")
    sys.exit(77)

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
PAGE, PAGES, ROW = 16, 8, 256  # tokens a page, pages, bf16 values a token


class HostPool:
    """A page-first host KV pool: K rows of every token, then V rows."""

    page_size, size, layout = PAGE, PAGE * PAGES, "page_first"

    def __init__(self):
        self.kv_buffer = torch.zeros((2, self.size, ROW), dtype=torch.bfloat16)

    def get_page_buffer_meta(self, indices):
        row = ROW * 2
        base, v = self.kv_buffer.data_ptr(), self.size * ROW * 2
        ptrs = []
        for i in range(0, len(indices), PAGE):
            ptrs += [base + int(indices[i]) * row, base + int(indices[i]) * row + v]
        return ptrs, [PAGE * row] * len(ptrs)


def main():
    extra = {
        "backend_name": "tidepool",
        "module_path": "tidepool.sglang",
        "class_name": "TidepoolHiCacheStorage",
        "interface_v1": 1,
        "tidepool_addr": ADDR,
    }
    config = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
        model_name="example/model", extra_config=extra,
    )
    pool = HostPool()
    storage = StorageBackendFactory.create_backend("dynamic", config, pool)
    storage.register_mem_pool_host(pool)

    # SGLang names a page by the hash of its prefix; any unique strings do here.
    hashes = [uuid.uuid4().hex for _ in range(4)]
    pool.kv_buffer[:, : 4 * PAGE] = torch.randn(2, 4 * PAGE, ROW).to(torch.bfloat16)
    assert storage.batch_set_v1(hashes[:2], torch.arange(0, 2 * PAGE)) == [True, True]
    # The next two pages continue the same prefix.
    info = HiCacheStorageExtraInfo(prefix_keys=hashes[:2])
    assert storage.batch_set_v1(hashes[2:], torch.arange(2 * PAGE, 4 * PAGE), info) == [True, True]

    # A request sharing the prefix: how many pages are in L3, then load them.
    hit = storage.batch_exists(hashes + [uuid.uuid4().hex])
    assert hit == 4, hit
    assert storage.batch_get_v1(hashes, torch.arange(4 * PAGE, 8 * PAGE)) == [True] * 4
    assert torch.equal(pool.kv_buffer[:, : 4 * PAGE], pool.kv_buffer[:, 4 * PAGE :])
    print(f"{hit} pages of {PAGE} tokens found in tidepool and loaded into the host pool")
    storage.clear()
    print("sglang_hicache: ok")


if __name__ == "__main__":
    main()
