"""Type stubs of the native module (the classes `tidepool` re-exports)."""

from types import TracebackType
from typing import Any, Awaitable, Iterable, Mapping, Optional, Sequence, Tuple, Union

__version__: str

Key = Union[bytes, str, bytearray, memoryview]
"""A key: bytes (or any bytes-like object) as is, str as UTF-8."""

Value = Any
"""A block's bytes: any contiguous object with the buffer protocol (bytes,
bytearray, memoryview, numpy array) or a contiguous CPU torch tensor."""

WritableBuffer = Any
"""Where a block is read to: a writable contiguous buffer (bytearray,
memoryview, numpy array) or a contiguous CPU torch tensor."""

Blocks = Union[Iterable[Tuple[Key, Value]], Mapping[Key, Value]]

class TidepoolError(Exception):
    """A tidepool call failed. `code` is the server's error code (OOM,
    NOPARENT, ERR, ...) when the server refused, else None."""

    code: Optional[str]
    message: Optional[str]

class ServerError(TidepoolError):
    """The server refused the command: `code` is its error code."""

    code: str
    message: str

class ConnectionError(TidepoolError):
    """The connection to the server failed (refused, reset, closed)."""

class LeaseExpiredError(TidepoolError):
    """A shm get's lease ran out before it was given back: get again."""

class Match:
    """How many leading keys are stored, and the lease holding them."""

    matched: int
    lease: Optional[int]
    def __init__(self, matched: int, lease: Optional[int] = None) -> None: ...

def chain_keys(seed: Key, block_tokens: int, tokens: Sequence[int]) -> list[bytes]:
    """The chain keys of `tokens` in blocks of `block_tokens`, as KV.HASH
    makes them; a trailing partial block gets no key."""

def event_hash(key: Key) -> int:
    """The 64-bit hash naming a block in the server's ZMQ KV events:
    XXH3-64 (seed 0) of its key."""

def key_slot(key: Key) -> int:
    """The cluster slot (0..16384) of a key."""

class Client:
    """A blocking client; calls release the GIL and may come from many threads."""

    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        connections: int = 4,
        plane: str = "auto",
        inline_below: Optional[int] = None,
        read_lease_ms: Optional[int] = None,
        streaming_reads: Optional[bool] = None,
        shm_copy_threads: Optional[int] = None,
    ) -> None: ...
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
        key: Key,
        value: Value,
        *,
        parent: Optional[Key] = None,
        ttl_ms: Optional[int] = None,
        pin: bool = False,
        tier: Optional[str] = None,
    ) -> None: ...
    def put_many(
        self, blocks: Blocks, *, chain: bool = False, parent: Optional[Key] = None
    ) -> list[Optional[TidepoolError]]: ...
    def put_chain(self, blocks: Blocks, *, parent: Optional[Key] = None) -> None: ...
    def put_many_ptrs(
        self,
        keys: Sequence[Key],
        ptrs: Sequence[int],
        lens: Sequence[int],
        *,
        chain: bool = False,
        parent: Optional[Key] = None,
    ) -> list[Optional[TidepoolError]]: ...
    def get(self, key: Key) -> Optional[bytes]: ...
    def get_many(self, keys: Sequence[Key]) -> list[Optional[bytes]]: ...
    def get_into(self, key: Key, buf: WritableBuffer) -> Optional[int]: ...
    def get_many_into(
        self, keys: Sequence[Key], bufs: Sequence[WritableBuffer]
    ) -> list[Optional[int]]: ...
    def get_many_into_ptrs(
        self, keys: Sequence[Key], ptrs: Sequence[int], lens: Sequence[int]
    ) -> list[Optional[int]]: ...
    def match_prefix(self, keys: Sequence[Key], *, lease_ms: Optional[int] = None) -> Match: ...
    def match_tokens(
        self,
        seed: Key,
        block_tokens: int,
        tokens: Sequence[int],
        *,
        lease_ms: Optional[int] = None,
    ) -> Match: ...
    def release(self, lease: int) -> bool: ...
    def exists(self, keys: Sequence[Key]) -> list[Optional[str]]: ...
    def delete(self, keys: Sequence[Key]) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def command(self, *args: Union[Key, int]) -> Any: ...
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
        key: Key,
        value: Value,
        *,
        parent: Optional[Key] = None,
        ttl_ms: Optional[int] = None,
        pin: bool = False,
        tier: Optional[str] = None,
    ) -> Awaitable[None]: ...
    def put_many(
        self, blocks: Blocks, *, chain: bool = False, parent: Optional[Key] = None
    ) -> Awaitable[list[Optional[TidepoolError]]]: ...
    def put_chain(self, blocks: Blocks, *, parent: Optional[Key] = None) -> Awaitable[None]: ...
    def put_many_ptrs(
        self,
        keys: Sequence[Key],
        ptrs: Sequence[int],
        lens: Sequence[int],
        *,
        chain: bool = False,
        parent: Optional[Key] = None,
    ) -> Awaitable[list[Optional[TidepoolError]]]: ...
    def get(self, key: Key) -> Awaitable[Optional[bytes]]: ...
    def get_many(self, keys: Sequence[Key]) -> Awaitable[list[Optional[bytes]]]: ...
    def get_into(self, key: Key, buf: WritableBuffer) -> Awaitable[Optional[int]]: ...
    def get_many_into(
        self, keys: Sequence[Key], bufs: Sequence[WritableBuffer]
    ) -> Awaitable[list[Optional[int]]]: ...
    def get_many_into_ptrs(
        self, keys: Sequence[Key], ptrs: Sequence[int], lens: Sequence[int]
    ) -> Awaitable[list[Optional[int]]]: ...
    def match_prefix(
        self, keys: Sequence[Key], *, lease_ms: Optional[int] = None
    ) -> Awaitable[Match]: ...
    def match_tokens(
        self,
        seed: Key,
        block_tokens: int,
        tokens: Sequence[int],
        *,
        lease_ms: Optional[int] = None,
    ) -> Awaitable[Match]: ...
    def release(self, lease: int) -> Awaitable[bool]: ...
    def exists(self, keys: Sequence[Key]) -> Awaitable[list[Optional[str]]]: ...
    def delete(self, keys: Sequence[Key]) -> Awaitable[int]: ...
    def stats(self) -> Awaitable[dict[str, Any]]: ...
    def command(self, *args: Union[Key, int]) -> Awaitable[Any]: ...
    def close(self) -> None: ...
    def __aenter__(self) -> Awaitable[AsyncClient]: ...
    def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Awaitable[bool]: ...
