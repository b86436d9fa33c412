"""tidepool: a Python client of the tidepool KV-cache store.

`Client` (blocking) and `AsyncClient` (asyncio) speak to a tidepool server
(or cluster) over RESP for metadata and over its data plane (shared memory on
the same host, else TCP) for block bytes. Values are read from and written
into the caller's own memory: anything with the buffer protocol (bytes,
bytearray, memoryview, numpy arrays), CPU torch tensors, or raw addresses
(the ``*_ptrs`` methods), without a copy in Python. Calls release the GIL.

    import tidepool
    client = tidepool.Client("127.0.0.1:6379")
    keys = tidepool.chain_keys(b"model-a", 16, list(range(64)))
    client.put_chain([(k, bytes(4096)) for k in keys])
    hit = client.match_prefix(keys, lease_ms=30_000)
    assert hit.matched == 4
    client.release(hit.lease)

The engine connectors live in `tidepool.sglang`, `tidepool.lmcache` and
`tidepool.vllm`; they import their engine only when used.
"""

from ._tidepool import (
    AsyncClient,
    Client,
    ConnectionError,
    LeaseExpiredError,
    Match,
    ServerError,
    TidepoolError,
    __version__,
    chain_keys,
    event_hash,
    key_slot,
)

# A runtime thread handing an asyncio result to its loop must not be
# caught by the interpreter's shutdown (see the native module's _quiesce).
import atexit as _atexit

from . import _tidepool

_atexit.register(_tidepool._quiesce)

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectionError",
    "LeaseExpiredError",
    "Match",
    "ServerError",
    "TidepoolError",
    "__version__",
    "chain_keys",
    "event_hash",
    "key_slot",
]
