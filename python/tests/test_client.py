"""tidepool's Python client against a real server at $TIDEPOOL_ADDR.

Run by tests/python.rs (which starts the server); by hand:
    TIDEPOOL_ADDR=127.0.0.1:6379 python3 -m unittest discover -s python/tests
"""

import asyncio
import ctypes
import os
import threading
import time
import unittest
import uuid

import tidepool

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")

try:
    import numpy as np
except ImportError:  # scripts/test.sh installs it
    np = None


def fresh(prefix="t"):
    """Keys no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def block(i, n):
    """n bytes that say which block they are."""
    return (i.to_bytes(4, "little") * (n // 4 + 1))[:n]


class ConnectTest(unittest.TestCase):
    def test_bad_arguments_are_value_errors(self):
        for addr in ["nohost", "h:notaport", ":6379", "h:99999"]:
            with self.assertRaises(ValueError, msg=addr):
                tidepool.Client(addr)
        with self.assertRaises(ValueError):
            tidepool.Client(ADDR, plane="carrier-pigeon")
        with self.assertRaises(ValueError):
            tidepool.Client(ADDR, connections=0)
        with self.assertRaises(ValueError):
            tidepool.Client(ADDR, connections=10**6)
        with self.assertRaisesRegex(TypeError, "planes"):
            tidepool.Client(ADDR, planes="tcp")
        with self.assertRaises(TypeError):
            tidepool.Client(ADDR, connections="four")
        with tidepool.Client(ADDR, connections=None, plane="tcp", read_lease_ms=5000) as c:
            self.assertEqual(c.data_plane, "tcp")

    def test_unreachable_server_is_a_connection_error(self):
        with self.assertRaises(tidepool.ConnectionError) as cm:
            tidepool.Client("127.0.0.1:1")
        self.assertIsInstance(cm.exception, tidepool.TidepoolError)
        self.assertIsNone(cm.exception.code)

    def test_url_and_environment_addresses(self):
        with tidepool.Client("redis://" + ADDR + "/0") as c:
            self.assertEqual(c.command("PING"), "PONG")
        old = os.environ.get("TIDEPOOL_ADDR")
        os.environ["TIDEPOOL_ADDR"] = ADDR
        try:
            with tidepool.Client() as c:
                self.assertEqual(c.command("PING"), "PONG")
        finally:
            if old is None:
                del os.environ["TIDEPOOL_ADDR"]
            else:
                os.environ["TIDEPOOL_ADDR"] = old

    def test_closed_client_raises(self):
        c = tidepool.Client(ADDR)
        c.close()
        with self.assertRaisesRegex(tidepool.TidepoolError, "closed"):
            c.get(b"k")
        self.assertIn("closed", repr(c))

    def test_fork_child_must_connect_its_own(self):
        c = tidepool.Client(ADDR)
        key = fresh()
        c.put(key, b"from the parent")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the parent's client refuses, a new one works
            code = 1
            try:
                try:
                    c.get(key)
                except tidepool.TidepoolError as e:
                    if "forked" in str(e):
                        mine = tidepool.Client(ADDR)
                        if mine.get(key) == b"from the parent":
                            code = 0
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.read(r, 1), b"\x00")
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(c.get(key), b"from the parent")


class PlaneCase:
    """The same calls over each data plane."""

    plane = None

    @classmethod
    def setUpClass(cls):
        cls.c = tidepool.Client(ADDR, plane=cls.plane)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def test_plane_is_the_one_asked_for(self):
        want = None if self.plane == "inline" else self.plane
        self.assertEqual(self.c.data_plane, want)

    def test_chain_put_match_get_release(self):
        size = 256 << 10
        tokens = list(range(5 * 16 + 7))
        seed = fresh("model").encode()
        keys = tidepool.chain_keys(seed, 16, tokens)
        self.assertEqual(len(keys), 5)
        self.c.put_chain([(k, block(i, size)) for i, k in enumerate(keys)])
        m = self.c.match_prefix(keys + [b"absent"], lease_ms=10_000)
        self.assertEqual(m.matched, 5)
        self.assertIsNotNone(m.lease)
        self.assertEqual(self.c.match_tokens(seed, 16, tokens), tidepool.Match(5))
        bufs = [bytearray(size) for _ in keys]
        self.assertEqual(self.c.get_many_into(keys, bufs), [size] * 5)
        for i, b in enumerate(bufs):
            self.assertEqual(bytes(b), block(i, size))
        self.assertTrue(self.c.release(m.lease))
        self.assertFalse(self.c.release(m.lease))

    def test_misses_and_short_blocks(self):
        keys = [fresh(), fresh(), fresh()]
        self.c.put(keys[1], block(1, 100_000))
        bufs = [bytearray(200_000) for _ in keys]
        self.assertEqual(self.c.get_many_into(keys, bufs), [None, 100_000, None])
        self.assertEqual(bytes(bufs[1][:100_000]), block(1, 100_000))
        self.assertEqual(self.c.get_into(keys[0], bytearray(10)), None)

    def test_buffer_too_small_raises_and_writes_nothing_past_it(self):
        key = fresh()
        self.c.put(key, block(3, 300_000))
        whole = bytearray(b"\xee" * 400_000)
        view = memoryview(whole)[:200_000]
        with self.assertRaises(tidepool.TidepoolError):
            self.c.get_into(key, view)
        view.release()
        self.assertEqual(bytes(whole[200_000:]), b"\xee" * 200_000)

    @unittest.skipIf(np is None, "numpy is not installed")
    def test_numpy_arrays_of_any_dtype(self):
        key = fresh()
        arr = np.arange(128 * 1024, dtype=np.float16).reshape(256, 512)
        self.c.put(key, arr)
        out = np.zeros_like(arr)
        self.assertEqual(self.c.get_into(key, out), arr.nbytes)
        self.assertTrue(np.array_equal(arr, out))
        with self.assertRaisesRegex(TypeError, "contiguous"):
            self.c.get_into(key, np.zeros((512, 512), dtype=np.float16)[:, ::2])

    def test_raw_pointer_variants(self):
        n, size = 4, 128 << 10
        keys = [fresh() for _ in range(n)]
        src = (ctypes.c_char * (n * size))()
        for i in range(n):
            ctypes.memmove(ctypes.addressof(src) + i * size, block(i, size), size)
        base = ctypes.addressof(src)
        got = self.c.put_many_ptrs(keys, [base + i * size for i in range(n)], [size] * n)
        self.assertEqual(got, [None] * n)
        dst = (ctypes.c_char * (n * size))()
        dbase = ctypes.addressof(dst)
        lens = self.c.get_many_into_ptrs(keys, [dbase + i * size for i in range(n)], [size] * n)
        self.assertEqual(lens, [size] * n)
        self.assertEqual(bytes(dst), bytes(src))

    def test_get_and_get_many_return_bytes(self):
        keys = [fresh(), fresh()]
        self.c.put_many([(keys[0], b"one"), (keys[1], bytearray(b"two"))])
        self.assertEqual(self.c.get(keys[0]), b"one")
        self.assertEqual(self.c.get_many(keys + [fresh()]), [b"one", b"two", None])


try:
    import torch
except ImportError:  # scripts/test.sh installs it with the engines
    torch = None


@unittest.skipIf(torch is None, "torch is not installed")
class TorchTest(unittest.TestCase):
    """CPU tensors have no buffer protocol: their storage is read and
    written through data_ptr(), the tensor held meanwhile."""

    @classmethod
    def setUpClass(cls):
        cls.c = tidepool.Client(ADDR)

    def test_bfloat16_tensors_round_trip(self):
        keys = [fresh(), fresh()]
        src = [torch.randn(64, 128).to(torch.bfloat16) for _ in keys]
        self.assertEqual(self.c.put_many(list(zip(keys, src))), [None, None])
        dst = [torch.empty_like(t) for t in src]
        self.assertEqual(self.c.get_many_into(keys, dst), [t.nbytes for t in src])
        self.assertTrue(all(torch.equal(a, b) for a, b in zip(src, dst)))

    def test_views_and_odd_tensors(self):
        key = fresh()
        whole = torch.arange(1024, dtype=torch.int32)
        self.c.put(key, whole[256:512])  # a contiguous view: its own bytes
        out = torch.zeros(256, dtype=torch.int32)
        self.assertEqual(self.c.get_into(key, out), 1024)
        self.assertTrue(torch.equal(out, whole[256:512]))
        with self.assertRaisesRegex(TypeError, "contiguous"):
            self.c.put(fresh(), whole.view(32, 32).t())
        with self.assertRaisesRegex(TypeError, "contiguous"):
            self.c.get_into(key, torch.zeros(512, dtype=torch.int32)[::2])


class ShmTest(PlaneCase, unittest.TestCase):
    plane = "shm"


class TcpTest(PlaneCase, unittest.TestCase):
    plane = "tcp"


class InlineTest(PlaneCase, unittest.TestCase):
    plane = "inline"


class CallsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = tidepool.Client(ADDR)

    def test_chain_keys_match_the_server_hash(self):
        tokens = [7, 8, 9, 10, 11, 12, 13]
        mine = tidepool.chain_keys(b"seed", 2, tokens)
        theirs = self.c.command("KV.HASH", b"seed", 2, *tokens)
        self.assertEqual(mine, theirs)
        self.assertEqual(tidepool.chain_keys("seed", 2, tokens), mine)
        with self.assertRaises(ValueError):
            tidepool.chain_keys(b"s", 0, tokens)
        with self.assertRaises(OverflowError):
            tidepool.chain_keys(b"s", 2, [-1])

    def test_key_slot_is_redis_cluster(self):
        self.assertEqual(tidepool.key_slot(b"foo"), 12182)
        self.assertEqual(tidepool.key_slot("{user1000}.following"), tidepool.key_slot("user1000"))

    def test_str_and_bytes_keys_are_the_same_key(self):
        key = fresh()
        self.c.put(key, b"v")
        self.assertEqual(self.c.get(key.encode()), b"v")
        self.assertEqual(self.c.exists([key, fresh()]), ["dram", None])
        self.assertEqual(self.c.delete([key]), 1)

    def test_refusals_carry_the_server_code(self):
        with self.assertRaises(tidepool.ServerError) as cm:
            self.c.put(fresh(), b"v", parent=b"no-such-parent")
        self.assertEqual(cm.exception.code, "NOPARENT")
        parent = fresh()
        self.c.put(parent, b"p")
        out = self.c.put_many([(fresh(), b"a"), (fresh(), b"b")], parent=parent)
        self.assertEqual(out, [None, None])
        out = self.c.put_many([(fresh(), b"a")], parent=b"gone")
        self.assertIsInstance(out[0], tidepool.ServerError)
        self.assertEqual(out[0].code, "NOPARENT")
        with self.assertRaises(tidepool.ServerError) as cm:
            self.c.put_chain([(fresh(), b"a")], parent=b"gone")
        self.assertEqual(cm.exception.code, "NOPARENT")
        with self.assertRaises(tidepool.ServerError) as cm:
            self.c.command("NOSUCHCOMMAND")
        self.assertEqual(cm.exception.code, "ERR")

    def test_bad_arguments_raise_before_sending(self):
        with self.assertRaises(TypeError):
            self.c.put(b"k", "a str is not a value")
        with self.assertRaises(TypeError):
            self.c.get(12)
        with self.assertRaises(TypeError):
            self.c.match_prefix(b"one key, not a list")
        with self.assertRaises(TypeError):
            self.c.get_into(b"k", b"read-only bytes")
        with self.assertRaises(ValueError):
            self.c.get_many_into([b"a", b"b"], [bytearray(4)])
        shared = bytearray(100)
        with self.assertRaisesRegex(ValueError, "overlap"):
            self.c.get_many_into([b"a", b"b"], [shared, memoryview(shared)[50:]])
        with self.assertRaises(ValueError):
            self.c.get_many_into_ptrs([b"a"], [0], [10])
        with self.assertRaises(ValueError):
            self.c.put(b"k", b"v", tier="tape")
        with self.assertRaises(TypeError):
            self.c.put_many([b"not a pair"])
        with self.assertRaises(tidepool.TidepoolError):
            self.c.command("SUBSCRIBE", "ch")

    def test_ttl_pin_and_stats(self):
        key = fresh()
        self.c.put(key, b"v", ttl_ms=100)
        self.assertEqual(self.c.get(key), b"v")
        time.sleep(0.3)
        self.assertIsNone(self.c.get(key))
        pinned = fresh()
        self.c.put(pinned, b"v", pin=True)
        before = self.c.stats()
        self.c.match_prefix([pinned])
        after = self.c.stats()
        self.assertEqual(after["matches"], before["matches"] + 1)
        self.assertIn("dram", after["tiers"])
        self.assertGreaterEqual(after["tiers"]["dram"]["blocks"], 1)

    def test_the_gil_is_released_during_io(self):
        size, n = 1 << 20, 64
        keys = [fresh() for _ in range(n)]
        self.c.put_many([(k, block(i, size)) for i, k in enumerate(keys)])
        bufs = [bytearray(size) for _ in keys]

        def ticks_while(work):
            """How far a pure-Python counter gets in another thread while
            `work` runs for half a second."""
            done = threading.Event()
            ticks = 0

            def count():
                nonlocal ticks
                while not done.is_set():
                    ticks += 1

            t = threading.Thread(target=count)
            t.start()
            start = time.perf_counter()
            while time.perf_counter() - start < 0.5:
                work()
            done.set()
            t.join()
            return ticks

        idle = ticks_while(lambda: time.sleep(0.01))
        busy = ticks_while(lambda: self.c.get_many_into(keys, bufs))
        # Held through each call, the GIL would let the counter run only
        # between calls and at the interpreter's switch interval (a C call
        # that holds it, such as copying 64 MiB into a bytearray, lets it
        # reach about a tenth of its idle count).
        self.assertGreater(busy, idle * 0.3, f"{busy} ticks busy, {idle} idle")

    def test_buffers_are_let_go_when_a_call_returns(self):
        # An exported bytearray cannot be resized: each call must give its
        # buffers back before returning, not at some later call.
        for _ in range(50):
            value = bytearray(b"x" * (512 << 10))
            self.c.put(fresh(), value)
            value.extend(b"more")
            buf = bytearray(16)
            self.c.get_into(fresh(), buf)
            buf.extend(b"more")

        async def main():
            a = self.c.aio()
            for _ in range(50):
                value = bytearray(b"x" * (512 << 10))
                await a.put(fresh(), value)
                value.extend(b"more")

        asyncio.run(main())

    def test_many_threads_share_one_client(self):
        errors = []

        def worker(w):
            try:
                for i in range(50):
                    key = f"{fresh()}-{w}-{i}"
                    self.c.put(key, block(i, 1000))
                    if self.c.get(key) != block(i, 1000):
                        errors.append(key)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])


class AsyncTest(unittest.TestCase):
    def test_async_calls(self):
        async def main():
            async with await tidepool.AsyncClient.connect(ADDR) as c:
                seed = fresh("async").encode()
                keys = tidepool.chain_keys(seed, 4, list(range(32)))
                await c.put_chain([(k, block(i, 100_000)) for i, k in enumerate(keys)])
                m = await c.match_prefix(keys, lease_ms=5000)
                self.assertEqual(m.matched, 8)
                bufs = [bytearray(100_000) for _ in keys]
                lens = await asyncio.gather(*[c.get_into(k, b) for k, b in zip(keys, bufs)])
                self.assertEqual(lens, [100_000] * 8)
                self.assertEqual(bytes(bufs[5]), block(5, 100_000))
                self.assertTrue(await c.release(m.lease))
                with self.assertRaises(tidepool.ServerError):
                    await c.put(fresh(), b"v", parent=b"gone")
                self.assertEqual(await c.command("PING"), "PONG")
                # A cancelled call does not break the client.
                task = asyncio.ensure_future(c.get_many(keys))
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertEqual((await c.match_tokens(seed, 4, list(range(32)))).matched, 8)
            with self.assertRaisesRegex(tidepool.TidepoolError, "closed"):
                await c.get(b"k")
            with self.assertRaises(tidepool.ConnectionError):
                await tidepool.AsyncClient.connect("127.0.0.1:1")

        asyncio.run(main())


if __name__ == "__main__":
    unittest.main()
