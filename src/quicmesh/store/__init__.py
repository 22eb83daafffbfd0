"""Stores for replicated signed logs: :class:`MemoryStore` and :class:`SqliteStore`, both
implementing :class:`Store` (the contract, defined on the core side in
:mod:`quicmesh.core.store_api` and re-exported here) with the same caps and capacity policy (see
:mod:`.base`).

``SqliteStore`` is loaded lazily, so that importing the package does not import ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import IngestResult, LogKey, Store, StoreCounts, StoredOp, append
from .memory import MemoryStore

if TYPE_CHECKING:
    from .sqlite import SqliteStore

__all__ = ["IngestResult", "LogKey", "MemoryStore", "SqliteStore", "Store", "StoreCounts", "StoredOp", "append"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
