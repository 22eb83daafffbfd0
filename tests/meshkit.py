"""Driving one sans-IO :class:`~quicmesh.core.mesh.Mesh` through its timers in tests."""

from __future__ import annotations

from collections.abc import Iterator

from quicmesh.core.effects import Effect
from quicmesh.core.mesh import Mesh


def timer_steps(m: Mesh, now: float, end: float) -> Iterator[tuple[float, list[Effect]]]:
    """Fire ``m``'s timers in deadline order until ``end``: each firing's time and effects. The
    next deadline is read when the caller asks for the next step, so what it feeds the mesh in
    between (a failed dial, a reconnection) counts."""
    while True:
        d = m.next_deadline()
        now = max(now, d if d is not None else end)
        if now >= end:
            return
        yield now, m.handle_timer(now)
