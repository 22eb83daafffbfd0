"""Hole-punch wiring of :class:`~quicmesh.core.node.NodeCore` (a mixin, so the composition module
stays short; see :mod:`quicmesh.core.punch`): the punch messages, the public command
(:meth:`PunchCommands.punch`), the runtime's report of a punch dial, and the automatic trigger
(``punch.auto``): a ``Dial`` to a peer that failed, or is still pending ``punch.auto_after``
seconds after it left the dial gate (a dial into a closed NAT ends only at the handshake
timeout), starts a punch through up to ``punch.via_candidates`` connected nodes, unless one is
in progress or the peer's last punch failed for good within ``punch.cooldown``."""

from __future__ import annotations

from collections.abc import Iterable
from random import Random
from typing import TYPE_CHECKING

from ..bounded import ContainerRegistry, TtlMap
from ..identity import KeyPair, NodeId
from .effects import Dial
from .punch import PunchDial, PunchDone, Puncher
from .punch_messages import PUNCH_MESSAGES

if TYPE_CHECKING:
    from ..config import NodeConfig
    from .dialgate import DialRequest
    from .guard import Guard
    from .mesh import Mesh
    from .trust import Trust

__all__ = ["PUNCH_TYPES", "PunchCommands", "PunchDial", "PunchDone"]

PUNCH_TYPES = tuple(PUNCH_MESSAGES)


class PunchCommands:
    """``punch``, ``punch_dial_done`` and the automatic punch of a node core."""

    puncher: Puncher
    _punch_watch: TtlMap[NodeId, float]
    mesh: Mesh
    trust: Trust
    guard: Guard
    config: NodeConfig

    def _route(self, effects: Iterable[object], now: float) -> list[object]:
        raise NotImplementedError

    def _make_puncher(self, keypair: KeyPair, rng: Random, registry: ContainerRegistry,
                      wall_offset: float) -> Puncher:
        cfg = self.config.punch
        self._punch_watch = TtlMap("punch.slow_dials", cfg.max_active, cfg.auto_after, registry=registry)
        """Peers being dialled -> when the dial started; one still pending ``auto_after`` seconds
        later starts a punch alongside it (a dial into a closed NAT ends only at the handshake
        timeout)."""
        return Puncher(
            keypair, self.trust.wire_id, self.config.punch, rng, registry,
            wall=lambda now: now + wall_offset,
            own_record=lambda: self.mesh.book.direct_record or self.mesh.book.own_record,
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

    def punch_deadline(self) -> float | None:
        """The earliest time :meth:`punch_timer` has something to do."""
        a, b = self.puncher.next_deadline(), self._punch_watch.next_deadline()
        return a if b is None or (a is not None and a < b) else b

    def punch_timer(self, now: float) -> list[object]:
        """The puncher's deadlines, and a punch for each dial pending longer than ``auto_after``."""
        out = self._route(self.puncher.timer(now), now)
        for peer, _ in self._punch_watch.expire(now):
            out += self._auto_punch(peer, now)
        return out

    def punch_connected(self, peer: NodeId, now: float, *, direct: bool = True) -> list[object]:
        """A connection to ``peer`` is up: a slow dial to it is no longer watched, and a punch to
        it in progress ends as a success if the connection is direct (a relayed one is what the
        punch is to replace: a lab run saw a relayed reconnection end h1's punch as ``direct``)."""
        self._punch_watch.pop(peer)
        if not direct or not self.puncher.active(peer):
            return []
        return self._route(self.puncher.connected(peer, now), now)

    def _gate(self, eff: DialRequest, now: float) -> list[object]:
        out: list[object] = super()._gate(eff, now)  # type: ignore[misc]
        cfg = self.config.punch
        if type(eff) is Dial and cfg.enabled and cfg.auto and eff.peer not in self._punch_watch and \
                any(isinstance(o, Dial) and o.peer == eff.peer for o in out):
            self._punch_watch.set(eff.peer, now, now)
        return out

    def _auto_punch(self, peer: NodeId, now: float) -> list[object]:
        cfg = self.config.punch
        if (not cfg.enabled or not cfg.auto or peer in self.mesh.links.conns or self.puncher.active(peer)
                or self.puncher.cooling(peer)):
            return []
        vias = self._punch_vias(peer)
        return self._route(self.puncher.start(peer, vias, now), now) if vias else []

    def dial_failed(self, peer: NodeId | None, addresses: tuple[str, ...], now: float) -> list[object]:
        """A ``Dial`` failed (see :class:`~quicmesh.core.dial_node.DialCommands`); with
        ``punch.auto`` a failed dial to a known peer starts a punch through connected nodes,
        unless one is in progress or the peer's last punch failed for good lately."""
        out: list[object] = super().dial_failed(peer, addresses, now)  # type: ignore[misc]
        if peer is not None:
            self._punch_watch.pop(peer)
            out += self._auto_punch(peer, now)
        return out

    def _punch_vias(self, peer: NodeId) -> list[NodeId]:
        """Connected nodes to try as K: realm neighbours first, in the mesh's order."""
        conns = self.mesh.links.conns
        first = [p for p in self.mesh.realm.active_peers() if p in conns and p != peer]
        rest = [p for p in conns if p != peer and p not in first]
        return (first + rest)[: self.config.punch.via_candidates]
