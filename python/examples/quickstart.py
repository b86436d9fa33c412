"""Quick start: store a prompt's KV blocks as a chain, ask how much of a
longer prompt is cached, and read the cached blocks into your own buffers.

    tidepool-server &                      # one node, DRAM, 127.0.0.1:6379
    python3 python/examples/quickstart.py  # or TIDEPOOL_ADDR=host:port ...

Exits 0 only when every step did what it says.
"""

import asyncio
import os

import tidepool

ADDR = os.environ.get("TIDEPOOL_ADDR", "127.0.0.1:6379")
BLOCK_TOKENS = 16
BLOCK_BYTES = 256 << 10  # one block's KV tensors, all layers


def main():
    client = tidepool.Client(ADDR)
    print(f"connected to {ADDR}, block bytes over {client.data_plane or 'RESP'}")

    # An engine computed the KV of a 64-token prompt: four blocks of 16
    # tokens, chained (each key names its whole prefix).
    prompt = list(range(1000, 1064))
    keys = tidepool.chain_keys(b"my-model", BLOCK_TOKENS, prompt)
    blocks = [bytes([i + 1]) * BLOCK_BYTES for i in range(len(keys))]
    client.put_chain(list(zip(keys, blocks)))

    # A new request shares the first 48 tokens: three blocks are cached.
    # Hold them for 30 s while they are read, so eviction cannot take them.
    request = prompt[:48] + list(range(5000, 5032))
    hit = client.match_tokens(b"my-model", BLOCK_TOKENS, request, lease_ms=30_000)
    assert hit.matched == 3, hit
    print(f"{hit.matched * BLOCK_TOKENS} of {len(request)} tokens cached")

    # Read them straight into the engine's buffers (here bytearrays).
    want = tidepool.chain_keys(b"my-model", BLOCK_TOKENS, request)[: hit.matched]
    bufs = [bytearray(BLOCK_BYTES) for _ in want]
    lens = client.get_many_into(want, bufs)
    assert lens == [BLOCK_BYTES] * 3 and bufs == [bytearray(b) for b in blocks[:3]]
    assert client.release(hit.lease)

    # The same from asyncio.
    async def from_asyncio():
        async with await tidepool.AsyncClient.connect(ADDR) as aclient:
            m = await aclient.match_prefix(keys)
            assert m.matched == 4, m
            assert await aclient.get(keys[0]) == blocks[0]

    asyncio.run(from_asyncio())

    # Refusals raise with the server's code.
    try:
        client.put(b"orphan", b"x", parent=b"never-stored")
        raise AssertionError("a block with a missing parent was stored")
    except tidepool.ServerError as e:
        assert e.code == "NOPARENT", e.code

    stats = client.stats()
    print(f"server holds {stats['tiers']['dram']['blocks']} blocks")
    assert stats["tiers"]["dram"]["blocks"] >= 4
    print("quickstart: ok")


if __name__ == "__main__":
    main()
