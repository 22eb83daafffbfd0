"""The capacity policy shared by :class:`~quicmesh.store.memory.MemoryStore` and
:class:`~quicmesh.store.sqlite.SqliteStore`. The contract itself (:class:`Store`,
:class:`StoredOp`, :class:`IngestResult`, ...) lives on the core side in
:mod:`quicmesh.core.store_api` and is re-exported here.

Capacity policy (both stores, checked before anything is written)
----------------------------------------------------------------
A store is capped in operations, bytes (encoded header + payload) and logs
(:class:`~quicmesh.config.StoreConfig`). A log is *local* when it was written with
:meth:`Store.append_local`; an author is *foreign* when none of its logs here is local (in
practice: every author but this node). When a write would exceed a cap:

0. A foreign author is held to a quota over all its logs: ``max_ops_per_author`` operations and
   ``max_bytes_per_author`` bytes. An operation beyond it is refused
   (:attr:`IngestResult.REFUSED`, counted in ``StoreCounts.quota_refused``), so a few authors
   cannot take the whole store, and Sybil authors each get a bounded share.
1. A new log whose author is not local is refused when the log cap is reached.
2. Room is made by dropping the oldest operation (lowest timestamp of a log's first operation)
   of *prunable* foreign logs: logs whose name has a retention limit, or that carried a prune
   flag. A log always keeps its latest operation, so the chain can continue.
3. If that is not enough, a foreign operation is refused (:attr:`IngestResult.REFUSED`), while
   a local append evicts whole logs of foreign authors, least recently written first (counted
   in ``StoreCounts.evicted_logs`` / ``evicted_ops`` and in the store's evictions), until it
   fits. Only when the local logs alone fill the store does a local append raise
   :class:`~quicmesh.errors.LimitExceeded`. An acknowledged local append is never dropped by
   the cap policy; only the author's own ``prune``/retention or ``drop_log`` removes local
   operations. An evicted foreign log is fetched again by sync when there is room.

Logs left empty are removed. Retention (``max_log_length`` per log name) and the prune flag are
applied on every write, local or foreign, on every replica.
"""

from __future__ import annotations

from ..core.store_api import IngestResult, LogKey, Store, StoreCounts, StoredOp, append

__all__ = ["IngestResult", "LogKey", "Store", "StoreCounts", "StoredOp", "append"]
