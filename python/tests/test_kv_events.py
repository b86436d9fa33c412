"""The server's ZMQ KV events (--kv-events-zmq), decoded by a pyzmq +
msgpack subscriber, every field checked; and typed with msgspec structs laid
out as vLLM 0.34's KVEventBatch, BlockStored, BlockRemoved and
AllBlocksCleared, as a vLLM-format consumer decodes them.

tests/python.rs starts the servers: $TIDEPOOL_ADDR publishes with topic
"tidepool" and block size 32; $TIDEPOOL_LOSSY_ADDR has a one-event queue.
"""

import os
import time
import unittest
import uuid
from typing import Optional, Union

import tidepool
from tidepool.events import Subscriber, decode

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
LOSSY_ADDR = os.environ.get("TIDEPOOL_LOSSY_ADDR")

try:
    import msgspec
except ImportError:  # scripts/test.sh installs it
    msgspec = None


def info(client, field):
    text = client.command("INFO", "kvcache").decode()
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1]
    raise KeyError(f"INFO has no {field}")


def endpoint_of(client):
    """The bound endpoint, reachable from here (0.0.0.0 -> loopback)."""
    return info(client, "kv_events_zmq_endpoint").replace("0.0.0.0", "127.0.0.1")


def subscribed(client, topic):
    """A subscriber whose subscription has reached the server: ZMQ drops
    what is published before that, so probe blocks are stored until one's
    event arrives."""
    sub = Subscriber(endpoint_of(client), topic)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = f"probe-{uuid.uuid4().hex}"
        client.put(probe, b"p")
        want = tidepool.event_hash(probe)
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            batch = sub.recv(timeout_ms=50)
            if batch and any(want in e.get("block_hashes", []) for e in batch.events):
                return sub
    raise AssertionError("no event reached the subscriber in 10 s")


def events_until(sub, done, timeout=10.0):
    """Events received until `done(events so far)` holds."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sub.recv(timeout_ms=100)
        if batch is None:
            continue
        got.extend(batch.events)
        if done(got):
            return got
    raise AssertionError(f"timed out; got {got!r:.2000}")


class KvEventsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = tidepool.Client(ADDR)
        cls.sub = subscribed(cls.c, b"tidepool")

    @classmethod
    def tearDownClass(cls):
        cls.sub.close()
        cls.c.close()

    def test_frames_topic_sequence_and_batch_layout(self):
        key = f"frames-{uuid.uuid4().hex}"
        self.c.put(key, b"v")
        want = tidepool.event_hash(key)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self.sub.socket.poll(100):
                continue
            frames = self.sub.socket.recv_multipart()
            self.assertEqual(len(frames), 3)
            self.assertEqual(frames[0], b"tidepool")
            self.assertEqual(len(frames[1]), 8)
            import msgpack

            body = msgpack.unpackb(frames[2], raw=False)
            self.assertIsInstance(body, list)
            self.assertEqual(len(body), 2, "[ts, events]: no data_parallel_rank")
            ts, events = body
            self.assertIsInstance(ts, float)
            self.assertLess(abs(ts - time.time()), 60)
            batch = decode(frames)
            self.sub.last_seq = batch.seq
            if any(want in e.get("block_hashes", []) for e in events):
                return
        self.fail("the block's event never came")

    def test_a_stored_chain_and_its_removal(self):
        seed = uuid.uuid4().hex.encode()
        parent = f"root-{uuid.uuid4().hex}"
        self.c.put(parent, b"r")
        keys = tidepool.chain_keys(seed, 4, list(range(16)))
        self.c.put_chain([(k, b"x" * 100) for k in keys], parent=parent)
        hashes = [tidepool.event_hash(k) for k in keys]
        start_missed = self.sub.missed

        def stored_all(evs):
            seen = [h for e in evs if e["type"] == "BlockStored" for h in e["block_hashes"]]
            return all(h in seen for h in hashes)

        events = events_until(self.sub, stored_all)
        stored = [e for e in events if e["type"] == "BlockStored" and hashes[0] in e["block_hashes"]]
        self.assertEqual(len(stored), 1, "a chain put in one call is one event")
        e = stored[0]
        self.assertEqual(
            e,
            {
                "type": "BlockStored",
                "block_hashes": hashes,
                "parent_block_hash": tidepool.event_hash(parent),
                "token_ids": [],
                "block_size": 32,
                "lora_id": None,
                "medium": "CPU",
                "lora_name": None,
            },
        )
        # Deleting the root removes the chain under it.
        self.assertEqual(self.c.delete([parent]), 1)
        removed_want = set(hashes) | {tidepool.event_hash(parent)}

        def removed_all(evs):
            seen = {h for e in evs if e["type"] == "BlockRemoved" for h in e["block_hashes"]}
            return removed_want <= seen

        events = events_until(self.sub, removed_all)
        for e in events:
            if e["type"] == "BlockRemoved":
                self.assertEqual(set(e), {"type", "block_hashes", "medium"})
                self.assertEqual(e["medium"], "CPU")
        self.assertEqual(self.sub.missed, start_missed, "no batch was lost")

    def test_garbage_on_the_pub_port_does_not_stop_events(self):
        import socket

        host, port = endpoint_of(self.c)[len("tcp://"):].rsplit(":", 1)
        junk = []
        for i in range(20):
            s = socket.create_connection((host, int(port)), 2)
            # Random bytes, a ZMTP-looking greeting cut short, or nothing.
            s.sendall(os.urandom(4096) if i % 3 == 0 else b"\xff" + bytes(8) + b"\x7f" if i % 3 == 1 else b"")
            junk.append(s)
        key = f"after-junk-{uuid.uuid4().hex}"
        self.c.put(key, b"v")
        want = tidepool.event_hash(key)
        events_until(self.sub, lambda evs: any(want in e.get("block_hashes", []) for e in evs))
        self.assertEqual(self.c.command("PING"), "PONG")
        for s in junk:
            s.close()

    def test_zz_flushall_is_all_blocks_cleared(self):
        self.c.put(f"flush-{uuid.uuid4().hex}", b"v")
        self.c.command("FLUSHALL")
        events = events_until(self.sub, lambda evs: any(e["type"] == "AllBlocksCleared" for e in evs))
        cleared = [e for e in events if e["type"] == "AllBlocksCleared"]
        self.assertEqual(cleared, [{"type": "AllBlocksCleared"}])

    @unittest.skipIf(msgspec is None, "msgspec is not installed")
    def test_decodes_as_vllm_typed_structs(self):
        # The layout of vLLM 0.34's events (vllm/distributed/kv_events.py):
        # a tagged union of maps inside an array-like batch.
        class Event(msgspec.Struct, tag=True, omit_defaults=True):
            pass

        class BlockStored(Event):
            block_hashes: list[Union[bytes, int]]
            parent_block_hash: Optional[Union[bytes, int]]
            token_ids: list[int]
            block_size: int
            lora_id: Optional[int]
            medium: Optional[str]
            lora_name: Optional[str]
            extra_keys: Optional[list] = None
            group_idx: Optional[int] = None

        class BlockRemoved(Event):
            block_hashes: list[Union[bytes, int]]
            medium: Optional[str]
            group_idx: Optional[int] = None

        class AllBlocksCleared(Event):
            pass

        class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
            ts: float
            events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]
            data_parallel_rank: Optional[int] = None

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        key = f"typed-{uuid.uuid4().hex}"
        self.c.put_chain([(key, b"a"), (key + "-2", b"b")])
        self.c.delete([key])
        want = tidepool.event_hash(key)
        deadline = time.monotonic() + 10
        kinds = set()
        while time.monotonic() < deadline and kinds != {BlockStored, BlockRemoved}:
            if not self.sub.socket.poll(100):
                continue
            frames = self.sub.socket.recv_multipart()
            batch = decoder.decode(frames[2])
            self.assertIsNone(batch.data_parallel_rank)
            for e in batch.events:
                if want in getattr(e, "block_hashes", []):
                    kinds.add(type(e))
                    if isinstance(e, BlockStored):
                        self.assertEqual(e.block_hashes, [want, tidepool.event_hash(key + "-2")])
                        self.assertIsNone(e.parent_block_hash)
        self.assertEqual(kinds, {BlockStored, BlockRemoved})


@unittest.skipIf(LOSSY_ADDR is None, "TIDEPOOL_LOSSY_ADDR (a server with --kv-events-queue 1) is not set")
class LossTest(unittest.TestCase):
    def test_events_lost_in_a_full_queue_show_as_sequence_gaps(self):
        c = tidepool.Client(LOSSY_ADDR)
        sub = subscribed(c, b"")
        lost_before = int(info(c, "kv_events_zmq_lost"))
        # Bursts of inline puts (one KV.MPUT each) outrun a one-event queue.
        for _ in range(20):
            c.put_many([(f"burst-{uuid.uuid4().hex}", b"x") for _ in range(5000)])
            if int(info(c, "kv_events_zmq_lost")) > lost_before:
                break
        self.assertGreater(int(info(c, "kv_events_zmq_lost")), lost_before)
        # The batch after a loss skips a sequence number.
        marker = f"after-{uuid.uuid4().hex}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            c.put(marker, b"m")
            batch = sub.recv(timeout_ms=200)
            while batch is not None and sub.missed == 0:
                batch = sub.recv(timeout_ms=200)
            if sub.missed > 0:
                break
        self.assertGreater(sub.missed, 0, "the subscriber saw no gap")
        sub.close()
        c.close()


if __name__ == "__main__":
    unittest.main()
