"""LMCache's built-in `resp://` remote backend works against tidepool
unchanged: the bytes its native RESP client sends (AUTH, SET, GET, EXISTS,
their batched forms) are recorded through a proxy in front of a real
redis-server, then replayed to a fresh redis-server and to tidepool
($TIDEPOOL_ADDR), and the two servers' replies must be the same bytes.
DEL, which that client does not send (LMCache removes nothing through
it), is replayed too, framed as the client frames its commands.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest
import uuid

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
PASSWORD = "resp-conformance"

try:
    from lmcache.v1.storage_backend.native_clients.resp_client import RESPClient
except Exception as e:  # scripts/test.sh installs lmcache where it can
    SKIP = f"lmcache's RESP client is not importable here: {e}"
else:
    SKIP = None if shutil.which("redis-server") else "redis-server is not installed"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server that wants a password, as a Redis that
    LMCache authenticates to does."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class RecordingProxy:
    """Forwards connections to `backend`, keeping what each client sent."""

    def __init__(self, backend_port):
        self.backend_port = backend_port
        self.sent = []  # per connection, the client's bytes
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.backend_port))
            record = bytearray()
            self.sent.append(record)
            threading.Thread(target=self._pump, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pump(src, dst, record):
        try:
            while data := src.recv(1 << 16):
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def frames(data, requests):
    """Splits `data` into complete RESP values (requests: arrays of bulk
    strings; replies: any type). Returns (values, rest)."""
    out, i = [], 0

    def line(at):
        end = data.index(b"\r\n", at)
        return data[at:end], end + 2

    def value(at):
        kind = data[at : at + 1]
        head, at = line(at + 1)
        if kind in (b"+", b"-", b":", b"_", b",", b"#"):
            return at
        if kind in (b"$", b"=", b"!"):
            n = int(head)
            return at if n < 0 else at + n + 2
        if kind in (b"*", b"~", b">", b"%"):
            n = int(head) * (2 if kind == b"%" else 1)
            for _ in range(max(n, 0)):
                at = value(at)
            return at
        raise ValueError(f"not RESP at {at}: {data[at:at + 20]!r}")

    while i < len(data):
        try:
            end = value(i)
        except (ValueError, IndexError):
            break
        if end > len(data):
            break
        out.append(bytes(data[i:end]))
        i = end
    return out, bytes(data[i:])


def replay(port, stream):
    """Sends a recorded stream to a server; its replies, one per request."""
    requests, rest = frames(stream, True)
    assert rest == b"", f"a partial request was recorded: {rest[:40]!r}"
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(stream)
        got = bytearray()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            replies, _ = frames(got, False)
            if len(replies) >= len(requests):
                return requests, replies
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                break
            if not chunk:
                break
            got.extend(chunk)
    raise AssertionError(f"{len(frames(got, False)[0])} replies to {len(requests)} requests")


@unittest.skipIf(SKIP, SKIP)
class LmcacheRespConformanceTest(unittest.TestCase):
    def test_lmcache_resp_client_bytes_get_the_same_replies(self):
        recorded_on = RedisServer()
        proxy = RecordingProxy(recorded_on.port)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        def on_loop(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        async def connect():
            # The client watches its completion fd on the loop it is made on.
            return RESPClient("127.0.0.1", proxy.port, 1, loop, username="default", password=PASSWORD)

        try:
            client = on_loop(connect())
            tag = uuid.uuid4().hex[:8]
            one, many = f"lmc-{tag}-one", [f"lmc-{tag}-{i}" for i in range(3)]
            chunk = bytes(range(256)) * 256  # 64 KiB, as a small KV chunk
            on_loop(client.set(one, memoryview(chunk)))
            self.assertTrue(on_loop(client.exists(one)))
            self.assertFalse(on_loop(client.exists(f"lmc-{tag}-absent")))
            buf = bytearray(len(chunk))
            on_loop(client.get(one, memoryview(buf)))
            self.assertEqual(bytes(buf), chunk)
            on_loop(client.batch_set(many, [memoryview(chunk)] * 3))
            got = on_loop(client.batch_exists(many + [f"lmc-{tag}-absent"]))
            self.assertEqual(got, [True] * 3 + [False])
            bufs = [bytearray(len(chunk)) for _ in many]
            on_loop(client.batch_get(many, [memoryview(b) for b in bufs]))
            self.assertTrue(all(bytes(b) == chunk for b in bufs))
            loop.call_soon_threadsafe(client.close)
            time.sleep(0.2)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            proxy.close()
            recorded_on.stop()
        streams = [bytes(s) for s in proxy.sent if s]
        self.assertTrue(streams, "the client sent nothing")
        sent = b"".join(streams)
        for command in (b"AUTH", b"SET", b"GET", b"EXISTS"):
            self.assertIn(command, sent.upper(), f"the client never sent {command!r}")
        # DEL, framed as the client frames commands: an array of bulk strings.
        key = f"lmc-{tag}-one".encode()
        streams[-1] += b"*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n" % (len(key), key)
        streams[-1] += b"*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n" % (len(key), key)

        reference = RedisServer()
        try:
            tidepool_port = int(ADDR.rsplit(":", 1)[1])
            compared = 0
            for stream in streams:
                requests, want = replay(reference.port, stream)
                _, got = replay(tidepool_port, stream)
                self.assertEqual(len(got), len(want))
                for req, w, g in zip(requests, want, got):
                    self.assertEqual(g, w, f"different replies to {req[:60]!r}")
                compared += len(requests)
            # AUTH, SET, EXISTS x2, GET, a batch of 3 each way, two DELs.
            self.assertGreaterEqual(compared, 12)
        finally:
            reference.stop()


if __name__ == "__main__":
    unittest.main()
