"""tidepool.lmcache as an LMCache remote-storage plugin: created through
LMCache's own CreateConnector from an LMCacheEngineConfig naming the plugin
(as LMCache does for remote_url / remote_storage_plugins), over LMCache's
real LocalCPUBackend buffers, against a real server at $TIDEPOOL_ADDR.
"""

import asyncio
import os
import threading
import unittest
import uuid

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")

try:
    import torch
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.metadata import LMCacheMetadata
    from lmcache.v1.storage_backend.connector import CreateConnector
    from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector
    from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
except Exception as e:  # scripts/test.sh installs lmcache where it can
    SKIP = f"lmcache is not importable here: {e}"
else:
    SKIP = None

import tidepool

CHUNK = 16


def info(field):
    with tidepool.Client(ADDR) as c:
        for line in c.command("INFO", "kvcache").decode().splitlines():
            if line.startswith(field + ":"):
                return int(line.split(":", 1)[1])
    raise KeyError(field)


@unittest.skipIf(SKIP, SKIP)
class LmcachePluginTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = f"model-{uuid.uuid4().hex[:8]}"
        cls.config = LMCacheEngineConfig.from_defaults(
            chunk_size=CHUNK,
            local_cpu=False,
            max_local_cpu_size=0.05,
            remote_url=f"tidepool://{ADDR}",
            remote_serde="naive",
            remote_storage_plugins=["tidepool"],
            extra_config={
                "remote_storage_plugin.tidepool.module_path": "tidepool.lmcache",
                "remote_storage_plugin.tidepool.class_name": "TidepoolConnectorAdapter",
                "save_chunk_meta": False,
                "tidepool_lease_ms": 20_000,
            },
        )
        cls.metadata = LMCacheMetadata(
            model_name=cls.model,
            world_size=1,
            local_world_size=1,
            worker_id=0,
            local_worker_id=0,
            kv_dtype=torch.bfloat16,
            kv_shape=(2, 2, CHUNK, 2, 8),
            chunk_size=CHUNK,
        )
        cls.cpu = LocalCPUBackend(cls.config, cls.metadata)
        cls.loop = asyncio.new_event_loop()
        threading.Thread(target=cls.loop.run_forever, daemon=True).start()
        cls.conn = CreateConnector(cls.config.remote_url, cls.loop, cls.cpu, cls.config, cls.metadata)

    @classmethod
    def tearDownClass(cls):
        cls.drive(cls.conn.close())
        cls.loop.call_soon_threadsafe(cls.loop.stop)

    @classmethod
    def drive(cls, coro):
        return asyncio.run_coroutine_threadsafe(coro, cls.loop).result(30)

    def key(self):
        return CacheEngineKey(self.model, 1, 0, uuid.uuid4().int & ((1 << 63) - 1), torch.bfloat16)

    def chunk(self, seed):
        inner = self.conn._connector  # LMCache wraps connectors for metrics
        obj = self.cpu.allocate(inner.meta_shapes, inner.meta_dtypes, inner.meta_fmt)
        g = torch.Generator().manual_seed(seed)
        obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=g).to(obj.tensor.dtype))
        return obj

    def test_created_by_lmcaches_factory_from_the_plugin_config(self):
        self.assertIsInstance(self.conn, RemoteConnector)
        self.assertIn("TidepoolConnector", repr(self.conn))
        self.assertEqual(self.drive(self.conn.ping()), 0)

    def test_put_exists_get_remove(self):
        key, obj = self.key(), self.chunk(1)
        want = obj.tensor.clone()
        self.drive(self.conn.put(key, obj))
        self.assertTrue(self.drive(self.conn.exists(key)))
        self.assertTrue(self.conn.exists_sync(key))
        got = self.drive(self.conn.get(key))
        self.assertTrue(torch.equal(got.tensor, want))
        got.ref_count_down()
        self.assertIsNone(self.drive(self.conn.get(self.key())))
        self.assertIn(key.to_string(), self.drive(self.conn.list()))
        self.assertTrue(self.conn.remove_sync(key))
        self.assertFalse(self.conn.exists_sync(key))

    def test_pinned_lookup_holds_the_prefix_until_its_read(self):
        keys = [self.key() for _ in range(4)]
        objs = [self.chunk(10 + i) for i in range(4)]
        wants = [o.tensor.clone() for o in objs]
        self.drive(self.conn.batched_put(keys, objs))
        lookup = uuid.uuid4().hex
        leases = info("kv_leases")
        n = self.drive(self.conn.batched_async_contains(lookup, keys + [self.key()], pin=True))
        self.assertEqual(n, 4)
        self.assertEqual(info("kv_leases"), leases + 1, "the pinned lookup holds a lease")
        self.assertEqual(self.conn.batched_contains(keys[:2]), 2)
        got = self.drive(self.conn.batched_get_non_blocking(lookup, keys + [self.key()]))
        self.assertEqual(len(got), 4, "the leading chunks, not the miss after them")
        for g, w in zip(got, wants):
            self.assertTrue(torch.equal(g.tensor, w))
            g.ref_count_down()
        self.assertEqual(info("kv_leases"), leases, "the read gave the lease back")

    def test_a_batched_put_is_one_chain(self):
        keys = [self.key() for _ in range(3)]
        self.drive(self.conn.batched_put(keys, [self.chunk(20 + i) for i in range(3)]))
        self.assertEqual(self.conn.batched_contains(keys), 3)
        # Removing the first chunk removes the chunks chained under it.
        self.assertTrue(self.conn.remove_sync(keys[0]))
        self.assertEqual(self.drive(self.conn.batched_async_contains("x", keys[1:])), 0)

    def test_batched_get_misses_are_none(self):
        keys = [self.key(), self.key()]
        self.drive(self.conn.put(keys[0], self.chunk(30)))
        got = self.drive(self.conn.batched_get(keys))
        self.assertIsNotNone(got[0])
        self.assertIsNone(got[1])
        got[0].ref_count_down()


if __name__ == "__main__":
    unittest.main()
