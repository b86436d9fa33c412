"""tidepool.sglang.TidepoolHiCacheStorage, loaded through SGLang's own
StorageBackendFactory ("dynamic" backend) from the installed sglang, against
a real server at $TIDEPOOL_ADDR. The host KV pool is a stand-in with the
page-first MHA layout of SGLang's MHATokenToKVPoolHost (K and V regions,
get_page_buffer_meta giving a K and a V pointer per page), as SGLang's file
backend tests stand one in.
"""

import os
import unittest
import uuid

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")

try:
    import torch
    from sglang.srt.mem_cache.hicache_storage import (
        HiCacheStorage,
        HiCacheStorageConfig,
        HiCacheStorageExtraInfo,
    )
    from sglang.srt.mem_cache.storage import StorageBackendFactory
except ImportError as e:  # scripts/test.sh installs sglang where it can
    SKIP = f"sglang is not importable here: {e}"
else:
    SKIP = None


class HostPool:
    """Page-first MHA host pool: K for every token, then V for every token;
    a token's row holds all layers' heads."""

    def __init__(self, pages=16, page_size=4, layers=2, heads=2, head_dim=8):
        self.page_size = page_size
        self.size = pages * page_size
        self.layout = "page_first"
        self.dtype = torch.bfloat16
        self.row = layers * heads * head_dim
        self.kv_buffer = torch.zeros((2, self.size, self.row), dtype=self.dtype)

    def get_page_buffer_meta(self, indices):
        assert len(indices) % self.page_size == 0
        base = self.kv_buffer.data_ptr()
        row_bytes = self.row * self.dtype.itemsize
        v_offset = self.size * row_bytes
        ptrs = []
        for i in range(0, len(indices), self.page_size):
            k = base + int(indices[i]) * row_bytes
            ptrs += [k, k + v_offset]
        return ptrs, [self.page_size * row_bytes] * len(ptrs)

    def pages(self, first, n):
        """Token indices of pages first..first+n."""
        return torch.arange(first * self.page_size, (first + n) * self.page_size)

    def page_bytes(self, page):
        s = slice(page * self.page_size, (page + 1) * self.page_size)
        return self.kv_buffer[0, s].clone(), self.kv_buffer[1, s].clone()


def config(**extra):
    extra = {
        "backend_name": "tidepool",
        "module_path": "tidepool.sglang",
        "class_name": "TidepoolHiCacheStorage",
        "interface_v1": 1,
        "tidepool_addr": ADDR,
        "key_prefix": f"sglang-test/{uuid.uuid4().hex}/",
        **extra,
    }
    return HiCacheStorageConfig(
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=False,
        enable_storage_metrics=False,
        is_page_first_layout=True,
        model_name="test/model",
        extra_config=extra,
    )


@unittest.skipIf(SKIP, SKIP)
class SglangBackendTest(unittest.TestCase):
    def setUp(self):
        self.pool = HostPool()
        self.backend = StorageBackendFactory.create_backend("dynamic", config(), self.pool)
        self.backend.register_mem_pool_host(self.pool)

    def tearDown(self):
        self.backend.clear()
        self.backend.close()

    def fill(self, first, n):
        s = slice(first * self.pool.page_size, (first + n) * self.pool.page_size)
        self.pool.kv_buffer[:, s] = torch.randn(2, n * self.pool.page_size, self.pool.row).to(torch.bfloat16)

    def test_loaded_by_sglangs_factory_as_its_interface(self):
        self.assertIsInstance(self.backend, HiCacheStorage)
        self.assertEqual(type(self.backend).__module__, "tidepool.sglang")
        self.assertEqual(self.backend.buffers, 2, "K and V per page")

    def test_zero_copy_set_exists_get(self):
        keys = [uuid.uuid4().hex for _ in range(4)]
        self.fill(0, 4)
        self.assertEqual(self.backend.batch_set_v1(keys, self.pool.pages(0, 4)), [True] * 4)
        self.assertEqual(self.backend.batch_exists(keys + [uuid.uuid4().hex]), 4)
        self.assertEqual(self.backend.batch_exists(keys[:2]), 2)
        self.assertEqual(self.backend.batch_exists([uuid.uuid4().hex] + keys), 0)
        # Into pages 8..11 of the pool, straight from the store.
        self.pool.kv_buffer[:, self.pool.pages(8, 4)] = 0
        self.assertEqual(self.backend.batch_get_v1(keys, self.pool.pages(8, 4)), [True] * 4)
        for i in range(4):
            want_k, want_v = self.pool.page_bytes(i)
            got_k, got_v = self.pool.page_bytes(8 + i)
            self.assertTrue(torch.equal(want_k, got_k) and torch.equal(want_v, got_v), f"page {i}")
        # A missing page fails it and what follows is not trusted by SGLang.
        out = self.backend.batch_get_v1([keys[0], uuid.uuid4().hex], self.pool.pages(12, 2))
        self.assertEqual(out, [True, False])

    def test_pages_written_together_are_one_chain(self):
        keys = [uuid.uuid4().hex for _ in range(3)]
        self.fill(0, 3)
        self.backend.batch_set_v1(keys, self.pool.pages(0, 3))
        # The next write continues the prefix: chained under its last page.
        more = [uuid.uuid4().hex]
        info = HiCacheStorageExtraInfo(prefix_keys=keys)
        self.assertEqual(self.backend.batch_set_v1(more, self.pool.pages(3, 1), info), [True])
        self.assertEqual(self.backend.batch_exists(keys + more), 4)
        # The second page's V block's parent is its K block, whose parent is
        # the first page's V block: removing the second page's K block
        # removes the rest of the prefix after it, never a middle alone.
        second_k = self.backend._names(keys[1])[0]
        self.assertEqual(self.backend.client.delete([second_k]), 1)
        self.assertEqual(self.backend.batch_exists(keys + more), 1)
        self.assertEqual(self.backend.client.exists(self.backend._blocks(more)), [None, None])

    def test_a_prefix_the_store_lost_starts_a_new_chain(self):
        gone = [uuid.uuid4().hex]
        keys = [uuid.uuid4().hex, uuid.uuid4().hex]
        self.fill(0, 2)
        info = HiCacheStorageExtraInfo(prefix_keys=gone)
        self.assertEqual(self.backend.batch_set_v1(keys, self.pool.pages(0, 2), info), [True, True])
        self.assertEqual(self.backend.batch_exists(keys), 2)

    def test_generic_interface(self):
        key = uuid.uuid4().hex
        value = torch.arange(64, dtype=torch.float32)
        self.assertTrue(self.backend.set(key, value))
        self.assertTrue(self.backend.exists(key))
        self.assertFalse(self.backend.exists(uuid.uuid4().hex))
        target = torch.zeros(64, dtype=torch.float32)
        self.assertTrue(torch.equal(self.backend.get(key, target), value))
        self.assertIsNone(self.backend.batch_get([uuid.uuid4().hex], [torch.zeros(64)])[0])

    def test_mla_readers_do_not_write(self):
        cfg = config()
        cfg.is_mla_model, cfg.tp_rank, cfg.tp_size = True, 1, 2
        reader = StorageBackendFactory.create_backend("dynamic", cfg, self.pool)
        reader.register_mem_pool_host(self.pool)
        try:
            key = uuid.uuid4().hex
            self.assertEqual(reader.batch_set_v1([key], self.pool.pages(0, 1)), [True])
            self.assertEqual(reader.batch_exists([key]), 0)
        finally:
            reader.close()

    def test_clear_removes_only_this_backends_blocks(self):
        other = f"not-sglang-{uuid.uuid4().hex}"
        self.backend.client.put(other, b"x")
        keys = [uuid.uuid4().hex]
        self.backend.batch_set_v1(keys, self.pool.pages(0, 1))
        self.backend.clear()
        self.assertEqual(self.backend.batch_exists(keys), 0)
        self.assertEqual(self.backend.client.get(other), b"x")


if __name__ == "__main__":
    unittest.main()
