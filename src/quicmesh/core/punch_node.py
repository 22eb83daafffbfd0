"""Hole-punch wiring of :class:`~quicmesh.core.node.NodeCore` (a mixin, so the composition module
stays short; see :mod:`quicmesh.core.punch`): the punch messages, the public command
(:meth:`PunchCommands.punch`), the automatic trigger (a direct dial to a peer failed) and the
runtime's report of a punch dial."""

from __future__ import annotations

from collections.abc import Iterable
from random import Random
from typing import TYPE_CHECKING

from ..bounded import ContainerRegistry
from ..identity import KeyPair, NodeId
from .punch import PunchDial, PunchDone, Puncher
from .punch_messages import PUNCH_MESSAGES

if TYPE_CHECKING:
    from ..config import NodeConfig
    from .guard import Guard
    from .mesh import Mesh
    from .trust import Trust

__all__ = ["PUNCH_TYPES", "PunchCommands", "PunchDial", "PunchDone"]

PUNCH_TYPES = tuple(PUNCH_MESSAGES)


class PunchCommands:
    """``punch``, ``punch_dial_done`` and the automatic punch of a node core."""

    puncher: Puncher
    mesh: Mesh
    trust: Trust
    guard: Guard
    config: NodeConfig

    def _route(self, effects: Iterable[object], now: float) -> list[object]:
        raise NotImplementedError

    def _make_puncher(self, keypair: KeyPair, rng: Random, registry: ContainerRegistry,
                      wall_offset: float) -> Puncher:
        return Puncher(
            keypair, self.trust.wire_id, self.config.punch, rng, registry,
            wall=lambda now: now + wall_offset,
            own_record=lambda: self.mesh.book.own_record,
            connected=lambda p: p in self.mesh.links.conns,
            member=lambda p, now: self.trust.permissions_of(p, now + wall_offset) is not None,
        )

    def punch(self, peer: NodeId, now: float, via: NodeId | None = None) -> list[object]:
        """Punch a direct path to ``peer`` through ``via`` (a node both are connected to), or
        through up to ``punch.via_candidates`` connected nodes in turn. The outcome comes as
        :class:`~quicmesh.core.punch.PunchDone` outputs (one per attempt; ``final`` on the last)."""
        vias = [via] if via is not None else self._punch_vias(peer)
        return self._route(self.puncher.start(peer, vias, now), now)

    def punch_dial_done(self, peer: NodeId, nonce: int, ok: bool, now: float,
                        reason: str = "dial_failed") -> list[object]:
        """The runtime finished a :class:`~quicmesh.core.punch.PunchDial`."""
        return self._route(self.puncher.dial_done(peer, nonce, ok, now, reason), now)

    def dial_failed(self, peer: NodeId | None, addresses: tuple[str, ...], now: float) -> list[object]:
        """A ``Dial`` failed (see :class:`~quicmesh.core.dial_node.DialCommands`); with
        ``punch.auto`` a failed dial to a known peer starts a punch through connected nodes,
        unless one is in progress or the peer's last punch failed for good lately."""
        out: list[object] = super().dial_failed(peer, addresses, now)  # type: ignore[misc]
        cfg = self.config.punch
        if (peer is not None and cfg.enabled and cfg.auto and peer not in self.mesh.links.conns
                and not self.puncher.active(peer) and not self.puncher.cooling(peer)):
            vias = self._punch_vias(peer)
            if vias:
                out += self._route(self.puncher.start(peer, vias, now), now)
        return out

    def _punch_vias(self, peer: NodeId) -> list[NodeId]:
        """Connected nodes to try as K: realm neighbours first, in the mesh's order."""
        conns = self.mesh.links.conns
        first = [p for p in self.mesh.realm.active_peers() if p in conns and p != peer]
        rest = [p for p in conns if p != peer and p not in first]
        return (first + rest)[: self.config.punch.via_candidates]
