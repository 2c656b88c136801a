"""Stores for resumable streams and fan-out across server processes.

:class:`MemoryStore` keeps streams in this process; :class:`RedisStore` keeps them in Redis
Streams so several processes share them. :class:`StoreSink` writes a pipeline's events into a
store. :func:`open_store` picks the store from a URL. See :mod:`pipeline.stores._base` for the
contract every store keeps.

:class:`RedisStore` loads lazily (PEP 562 ``__getattr__``): ``coredis`` (and the ``beartype``
it pulls in) is imported on first access to the name or when :func:`open_store` gets a Redis
URL, not with this package, so a server on the in-memory store never carries it.
"""

from __future__ import annotations

import typing as _typing
from urllib.parse import urlsplit as _urlsplit

from .. import ConfigError as _ConfigError
from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ..packaging import lazy_attributes as _lazy_attributes
from ._base import StoreError as StoreError
from ._base import StoreFull as StoreFull
from ._base import StoreUnavailable as StoreUnavailable
from ._base import StreamEnded as StreamEnded
from ._base import StreamInfo as StreamInfo
from ._base import StreamNotFound as StreamNotFound
from ._base import StreamStore as StreamStore
from ._memory import ALLOCATOR_SLACK as ALLOCATOR_SLACK
from ._memory import MemoryStore as MemoryStore
from ._memory import stored_nbytes as stored_nbytes
from ._sink import StoreSink as StoreSink

if _typing.TYPE_CHECKING:
    from ._redis import RedisStore as RedisStore

__all__ = [
    "ALLOCATOR_SLACK",
    "MemoryStore",
    "RedisStore",
    "StoreError",
    "StoreFull",
    "StoreSink",
    "StoreUnavailable",
    "StreamEnded",
    "StreamInfo",
    "StreamNotFound",
    "StreamStore",
    "open_store",
    "stored_nbytes",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def open_store(url: str | None) -> MemoryStore | RedisStore:
    """The store a URL names: ``None`` or ``memory://`` -> :class:`MemoryStore` (default
    budgets); ``redis://``, ``rediss://`` or ``unix://`` -> :class:`RedisStore` on that server.

    Use the result as ``async with open_store(url) as store:`` (a :class:`RedisStore` must be
    entered before use). Raises :class:`pipeline.ConfigError` for any other scheme.
    """
    if url is None:
        return MemoryStore()
    scheme = _urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme in _REDIS_SCHEMES:
        from ._redis import RedisStore

        return RedisStore(url)
    raise _ConfigError(
        f"store url: unknown scheme {scheme!r} in {url!r} "
        "(expected memory://, redis://, rediss:// or unix://)"
    )


# Public name -> the private module that defines it, imported on first access.
_LAZY: dict[str, str] = {"RedisStore": "._redis"}

if not _typing.TYPE_CHECKING:  # hidden from mypy, which would type every unknown name as Any
    __getattr__, __dir__ = _lazy_attributes(globals(), _LAZY, __all__)

_fixup_module_metadata(__name__, globals())
