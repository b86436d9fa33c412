"""Type stubs of the native module (the classes `tidepool` re-exports)."""

from types import TracebackType
from typing import Any, Awaitable, Iterable, Mapping, Optional, Sequence, Tuple, Union, final

__version__: str

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectionError",
    "LeaseExpiredError",
    "Match",
    "ServerError",
    "TidepoolError",
    "_RustBench",
    "__version__",
    "_quiesce",
    "chain_keys",
    "event_hash",
    "key_slot",
]

_Key = Union[bytes, str, bytearray, memoryview]
"""A key: bytes (or any bytes-like object) as is, str as UTF-8."""

_Value = Any
"""A block's bytes: any contiguous object with the buffer protocol (bytes,
bytearray, memoryview, numpy array) or a contiguous CPU torch tensor."""

_WritableBuffer = Any
"""Where a block is read to: a writable contiguous buffer (bytearray,
memoryview, numpy array) or a contiguous CPU torch tensor."""

_Blocks = Union[Iterable[Tuple[_Key, _Value]], Mapping[_Key, _Value]]

class TidepoolError(Exception):
    """A tidepool call failed. `code` is the server's error code (OOM,
    NOPARENT, ERR, ...) when the server refused, else None."""

    code: Optional[str]
    message: Optional[str]

class ServerError(TidepoolError):
    """The server refused the command: `code` is its error code (always set
    on a ServerError), `message` the rest."""

class ConnectionError(TidepoolError):
    """The connection to the server failed (refused, reset, closed)."""

class LeaseExpiredError(TidepoolError):
    """A shm get's lease ran out before it was given back: get again."""

@final
class Match:
    """How many leading keys are stored, and the lease holding them."""

    matched: int
    lease: Optional[int]
    def __new__(cls, matched: int, lease: Optional[int] = None) -> Match: ...

def chain_keys(seed: _Key, block_tokens: int, tokens: Sequence[int]) -> list[bytes]:
    """The chain keys of `tokens` in blocks of `block_tokens`, as KV.HASH
    makes them; a trailing partial block gets no key."""

def event_hash(key: _Key) -> int:
    """The 64-bit hash naming a block in the server's ZMQ KV events:
    XXH3-64 (seed 0) of its key."""

def key_slot(key: _Key) -> int:
    """The cluster slot (0..16384) of a key."""

@final
class Client:
    """A blocking client; calls release the GIL and may come from many threads."""

    def __new__(
        cls,
        addr: Optional[str] = None,
        *,
        connections: int = 4,
        plane: str = "auto",
        inline_below: Optional[int] = None,
        read_lease_ms: Optional[int] = None,
        streaming_reads: Optional[bool] = None,
        shm_copy_threads: Optional[int] = None,
    ) -> Client: ...
    @staticmethod
    def connect_cluster(
        seeds: Union[str, Sequence[str]],
        *,
        connections: int = 4,
        plane: str = "auto",
        inline_below: Optional[int] = None,
        read_lease_ms: Optional[int] = None,
        streaming_reads: Optional[bool] = None,
        shm_copy_threads: Optional[int] = None,
    ) -> Client: ...
    @property
    def data_plane(self) -> Optional[str]: ...
    def cluster_nodes(self) -> list[Tuple[str, Optional[str]]]: ...
    def put(
        self,
        key: _Key,
        value: _Value,
        *,
        parent: Optional[_Key] = None,
        ttl_ms: Optional[int] = None,
        pin: bool = False,
        tier: Optional[str] = None,
    ) -> None: ...
    def put_many(
        self, blocks: _Blocks, *, chain: bool = False, parent: Optional[_Key] = None
    ) -> list[Optional[TidepoolError]]: ...
    def put_chain(self, blocks: _Blocks, *, parent: Optional[_Key] = None) -> None: ...
    def put_many_ptrs(
        self,
        keys: Sequence[_Key],
        ptrs: Sequence[int],
        lens: Sequence[int],
        *,
        chain: bool = False,
        parent: Optional[_Key] = None,
    ) -> list[Optional[TidepoolError]]: ...
    def get(self, key: _Key) -> Optional[bytes]: ...
    def get_many(self, keys: Sequence[_Key]) -> list[Optional[bytes]]: ...
    def get_into(self, key: _Key, buf: _WritableBuffer) -> Optional[int]: ...
    def get_many_into(
        self, keys: Sequence[_Key], bufs: Sequence[_WritableBuffer]
    ) -> list[Optional[int]]: ...
    def get_many_into_ptrs(
        self, keys: Sequence[_Key], ptrs: Sequence[int], lens: Sequence[int]
    ) -> list[Optional[int]]: ...
    def match_prefix(self, keys: Sequence[_Key], *, lease_ms: Optional[int] = None) -> Match: ...
    def match_tokens(
        self,
        seed: _Key,
        block_tokens: int,
        tokens: Sequence[int],
        *,
        lease_ms: Optional[int] = None,
    ) -> Match: ...
    def release(self, lease: int) -> bool: ...
    def exists(self, keys: Sequence[_Key]) -> list[Optional[str]]: ...
    def delete(self, keys: Sequence[_Key]) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def command(self, *args: Union[_Key, int]) -> Any: ...
    def close(self) -> None: ...
    def aio(self) -> AsyncClient:
        """An AsyncClient over this client's connections."""
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class AsyncClient:
    """An asyncio client: `await AsyncClient.connect(addr)`; every call
    returns an awaitable. A cancelled call's transfer still completes."""

    @staticmethod
    def connect(
        addr: Optional[str] = None,
        *,
        connections: int = 4,
        plane: str = "auto",
        inline_below: Optional[int] = None,
        read_lease_ms: Optional[int] = None,
        streaming_reads: Optional[bool] = None,
        shm_copy_threads: Optional[int] = None,
    ) -> Awaitable[AsyncClient]: ...
    @staticmethod
    def connect_cluster(
        seeds: Union[str, Sequence[str]],
        *,
        connections: int = 4,
        plane: str = "auto",
        inline_below: Optional[int] = None,
        read_lease_ms: Optional[int] = None,
        streaming_reads: Optional[bool] = None,
        shm_copy_threads: Optional[int] = None,
    ) -> Awaitable[AsyncClient]: ...
    @property
    def data_plane(self) -> Optional[str]: ...
    def cluster_nodes(self) -> list[Tuple[str, Optional[str]]]: ...
    def put(
        self,
        key: _Key,
        value: _Value,
        *,
        parent: Optional[_Key] = None,
        ttl_ms: Optional[int] = None,
        pin: bool = False,
        tier: Optional[str] = None,
    ) -> Awaitable[None]: ...
    def put_many(
        self, blocks: _Blocks, *, chain: bool = False, parent: Optional[_Key] = None
    ) -> Awaitable[list[Optional[TidepoolError]]]: ...
    def put_chain(self, blocks: _Blocks, *, parent: Optional[_Key] = None) -> Awaitable[None]: ...
    def put_many_ptrs(
        self,
        keys: Sequence[_Key],
        ptrs: Sequence[int],
        lens: Sequence[int],
        *,
        chain: bool = False,
        parent: Optional[_Key] = None,
    ) -> Awaitable[list[Optional[TidepoolError]]]: ...
    def get(self, key: _Key) -> Awaitable[Optional[bytes]]: ...
    def get_many(self, keys: Sequence[_Key]) -> Awaitable[list[Optional[bytes]]]: ...
    def get_into(self, key: _Key, buf: _WritableBuffer) -> Awaitable[Optional[int]]: ...
    def get_many_into(
        self, keys: Sequence[_Key], bufs: Sequence[_WritableBuffer]
    ) -> Awaitable[list[Optional[int]]]: ...
    def get_many_into_ptrs(
        self, keys: Sequence[_Key], ptrs: Sequence[int], lens: Sequence[int]
    ) -> Awaitable[list[Optional[int]]]: ...
    def match_prefix(
        self, keys: Sequence[_Key], *, lease_ms: Optional[int] = None
    ) -> Awaitable[Match]: ...
    def match_tokens(
        self,
        seed: _Key,
        block_tokens: int,
        tokens: Sequence[int],
        *,
        lease_ms: Optional[int] = None,
    ) -> Awaitable[Match]: ...
    def release(self, lease: int) -> Awaitable[bool]: ...
    def exists(self, keys: Sequence[_Key]) -> Awaitable[list[Optional[str]]]: ...
    def delete(self, keys: Sequence[_Key]) -> Awaitable[int]: ...
    def stats(self) -> Awaitable[dict[str, Any]]: ...
    def command(self, *args: Union[_Key, int]) -> Awaitable[Any]: ...
    def close(self) -> None: ...
    def __aenter__(self) -> Awaitable[AsyncClient]: ...
    def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Awaitable[bool]: ...

def _quiesce() -> None:
    """Lets asyncio results under way land before the interpreter exits
    (registered with atexit by the package)."""

@final
class _RustBench:
    """The Rust side of `python -m tidepool.bench`."""

    def __new__(cls, addr: str, plane: str) -> _RustBench: ...
    def run(self, op: str, block: int, blocks: int, batch: int, rounds: int) -> list[float]: ...
