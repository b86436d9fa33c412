"""A subscriber of the server's KV events over ZMQ (``--kv-events-zmq``).

The server publishes what it stores and removes in vLLM's KV-events wire
format, for KV-aware routers: three frames per message (topic, sequence
number as 8 big-endian bytes, a msgpack batch ``[ts, events]``), each event
a map tagged by ``type``: ``BlockStored``, ``BlockRemoved`` or
``AllBlocksCleared``. Block hashes are ``tidepool.event_hash(key)``.

    from tidepool.events import Subscriber
    sub = Subscriber("tcp://127.0.0.1:5557")
    batch = sub.recv(timeout_ms=1000)
    for event in batch.events:
        print(event["type"], event.get("block_hashes"))
    print(sub.missed)   # batches lost on the way (sequence gaps)

Needs pyzmq and msgpack (``pip install pyzmq msgpack``).
"""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Batch:
    """One message: its sequence number, timestamp (Unix seconds) and
    events, and how many batches were missed just before it."""

    seq: int
    ts: float
    events: list = field(default_factory=list)
    gap: int = 0


def decode(frames: list) -> Batch:
    """A message's three frames as a Batch (its `gap` left 0)."""
    import msgpack

    if len(frames) != 3:
        raise ValueError(f"a KV events message has 3 frames, got {len(frames)}")
    _topic, seq, payload = frames
    if len(seq) != 8:
        raise ValueError(f"the sequence frame has 8 bytes, got {len(seq)}")
    body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(body, list) or len(body) < 2:
        raise ValueError(f"a batch is [ts, events, ...], got {body!r:.80}")
    return Batch(seq=int.from_bytes(seq, "big"), ts=body[0], events=body[1])


class Subscriber:
    """Subscribes to `endpoint` (the server's ``--kv-events-zmq``, with its
    host) under `topic`, and counts sequence gaps in `missed`."""

    def __init__(self, endpoint: str, topic: bytes = b"", ctx: Optional[Any] = None):
        import zmq

        self._zmq = zmq
        self._ctx = ctx or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)
        self.last_seq: Optional[int] = None
        self.missed = 0

    def recv(self, timeout_ms: Optional[int] = None) -> Optional[Batch]:
        """The next batch, or None when none came within `timeout_ms`."""
        if timeout_ms is not None and not self.socket.poll(timeout_ms):
            return None
        batch = decode(self.socket.recv_multipart())
        if self.last_seq is not None and batch.seq > self.last_seq + 1:
            batch.gap = batch.seq - self.last_seq - 1
            self.missed += batch.gap
        self.last_seq = batch.seq
        return batch

    def close(self) -> None:
        self.socket.close(linger=0)
