"""Configuration of the replicated log stores (``[store]``)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import KiB, MiB

__all__ = ["StoreConfig"]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Replicated log stores."""

    max_operations: int = 1_000_000
    """Operations stored (count), across all logs."""
    max_bytes: int = 256 * MiB
    """Bytes stored: each operation's canonical header plus its payload (the Rust mesh's
    MemoryStore had no cap)."""
    max_logs: int = 10_000
    """Logs stored (count); an application that opens a log per restart cannot grow it forever."""
    max_operation_size: int = 256 * KiB
    """Largest operation payload (bytes); a quarter of ``transport.max_frame_size`` so a sync
    batch carries several."""
    max_log_length: int = 0
    """Default retention: operations kept per log (count); 0 keeps every one. Per log name it
    can be set with ``Store.set_retention``. A log always keeps its latest operation."""
    sync_batch_ops: int = 64
    """Operations per sync batch message (count)."""
    sync_batch_bytes: int = 768 * KiB
    """Operation and payload bytes per sync batch message; below the 1 MiB frame with room for
    one maximal operation's overhead."""
    sync_timeout: float = 30.0
    """Seconds a sync session waits for each batch before it fails and is retried."""
    max_sync_sessions: int = 8
    """Sync sessions this node runs at once (count); more wait their turn."""
    sync_retry_min: float = 1.0
    """Floor (seconds) between two sync attempts with the same peer for the same log."""
    sync_retry_max: float = 300.0
    """Cap (seconds) of the exponential backoff after failed sync sessions; never given up."""
    resync_interval: float = 300.0
    """Seconds between anti-entropy syncs with each interested, connected peer."""
    max_sync_pairs: int = 4_096
    """(peer, log) pairs whose sync schedule is remembered (count); least recently used evicted."""
    max_interests: int = 1_000
    """Log names this node syncs at once (count)."""
    gossip_buffer_ops: int = 4_096
    """Live operations held while sync sessions run, over all sessions (count)."""
    gossip_buffer_bytes: int = 32 * MiB
    """Live operation bytes held while sync sessions run, over all sessions."""
    gossip_buffer_ttl: float = 60.0
    """Seconds a held live operation waits for its session to end before it is dropped."""
    max_invalid_ops: int = 3
    """Invalid operations accepted from a peer (within ``invalid_ops_window``) before the peer is
    disconnected."""
    invalid_ops_window: float = 600.0
    """Seconds a peer's invalid-operation count is remembered."""
    # #11 (logtrust)
    max_clock_skew: float = 300.0
    """Seconds an operation's timestamp may run ahead of the receiver's wall clock (default 5
    minutes); one further ahead is refused (not stored, counted, retried by sync later). The
    writer checks its own operations against it too."""
    max_ops_per_author: int = 100_000
    """Operations stored per foreign author (count, over all its logs; default a tenth of
    ``max_operations``); beyond it the author's operations are refused. This node's own logs
    are not counted."""
    max_bytes_per_author: int = 32 * MiB
    """Bytes stored per foreign author (over all its logs; default an eighth of ``max_bytes``)."""
