"""Log commands of :class:`~quicmesh.core.node.NodeCore` (a mixin, so the composition module
stays short): a node's logs are referenced, appended to and stored through its
:class:`~quicmesh.core.replication.LogReplication`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .replication import LogReplication

__all__ = ["LogCommands"]


class LogCommands:
    """``acquire_log``, ``release_log``, ``append_log`` and ``store_done`` for a node core."""

    logs: LogReplication

    def acquire_log(self, name: str, now: float) -> list[object]:
        """Take a reference to log ``name`` (the first starts replicating it)."""
        return self.logs.acquire(name, now)

    def release_log(self, name: str, now: float) -> list[object]:
        """Drop a reference to log ``name`` (the last stops replicating it)."""
        return self.logs.release(name, now)

    def append_log(self, name: str, payload: bytes, now: float, *, now_us: int,
                   min_us: int = 0) -> tuple[int, list[object]]:
        """Append to this node's log ``name``; the result is an ``Appended`` with the returned
        request id, after the store answered (:meth:`store_done`)."""
        return self.logs.append(name, payload, now=now, now_us=now_us, min_us=min_us)

    def store_done(self, req_id: int, result: object, now: float) -> list[object]:
        """The store answered request ``req_id`` (``result`` may be an exception)."""
        return self.logs.store_done(req_id, result, now)
