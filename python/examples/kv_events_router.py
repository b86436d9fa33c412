"""What a KV-aware router sees: the server's block events in vLLM's
KV-events format (ZMQ PUB, msgpack batches), indexed into a set of the
block hashes this node holds.

    tidepool-server --kv-events-zmq 'tcp://*:5557' &
    python3 python/examples/kv_events_router.py

NVIDIA Dynamo's KV router and llm-d's indexer subscribe to the same
endpoint as they do to a vLLM engine's (`--kv-events-config
'{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint":
"tcp://*:5557"}'` on the vLLM side). Block hashes are
`tidepool.event_hash(key)`. Needs pyzmq and msgpack. Exits 0 only when the
index matched what the server holds.
"""

import os
import time

import tidepool
from tidepool.events import Subscriber

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")


def endpoint(client):
    """The server's --kv-events-zmq endpoint, as INFO reports it."""
    for line in client.command("INFO", "kvcache").decode().splitlines():
        if line.startswith("kv_events_zmq_endpoint:"):
            return line.split(":", 1)[1].replace("0.0.0.0", ADDR.rsplit(":", 1)[0])
    raise SystemExit("the server publishes no ZMQ events: start it with --kv-events-zmq")


def main():
    client = tidepool.Client(ADDR)
    sub = Subscriber(endpoint(client))
    held = set()  # the router's index: hashes of blocks on this node

    def apply(batch):
        for e in batch.events:
            if e["type"] == "BlockStored":
                held.update(e["block_hashes"])
            elif e["type"] == "BlockRemoved":
                held.difference_update(e["block_hashes"])
            elif e["type"] == "AllBlocksCleared":
                held.clear()

    # ZMQ drops what is published before the subscription reaches the
    # server: store a probe until its event arrives.
    probe = b"router-probe"
    deadline = time.monotonic() + 10
    while tidepool.event_hash(probe) not in held:
        assert time.monotonic() < deadline, "no events arrived"
        client.put(probe, b"p")
        while (batch := sub.recv(timeout_ms=100)) is not None:
            apply(batch)

    keys = tidepool.chain_keys(b"router-demo", 16, list(range(128)))
    client.put_chain([(k, bytes(4096)) for k in keys])
    client.delete([keys[6]])  # removes blocks 6 and 7 (7 hangs under 6)
    want = {tidepool.event_hash(k) for k in keys[:6]}
    gone = {tidepool.event_hash(k) for k in keys[6:]}
    deadline = time.monotonic() + 10
    while not (want <= held and not gone & held):
        assert time.monotonic() < deadline, "the index never caught up"
        if (batch := sub.recv(timeout_ms=100)) is not None:
            apply(batch)
    assert sub.missed == 0, f"{sub.missed} batches lost"
    print(f"router index: {len(want)} of the chain's {len(keys)} blocks on this node")
    print("kv_events_router: ok")


if __name__ == "__main__":
    main()
