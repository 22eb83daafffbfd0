"""Dial and failure wiring of :class:`~quicmesh.core.node.NodeCore` (a mixin, so the
composition module stays short): every dial passes the dial gate
(:mod:`quicmesh.core.dialgate`), a failed or dropped dial reaches the mesh and the caller, and a
peer the failure detector (:mod:`quicmesh.core.failure`) declares failed is disconnected."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..identity import NodeId
from .effects import Dial, Disconnect, Send
from .failure import PeerFailed, ProbeSend

if TYPE_CHECKING:
    from .caller import Caller
    from .dialgate import DialGate, DialRequest
    from .mesh import Mesh

__all__ = ["DialCommands"]


class DialCommands:
    """``dial_failed`` and the dial gate's and failure detector's outputs, for a node core."""

    dials: DialGate
    mesh: Mesh
    caller: Caller

    def _route(self, effects: Iterable[object], now: float) -> list[object]:
        raise NotImplementedError

    def peer_disconnected(self, peer: NodeId, now: float, *, graceful: bool = False) -> list[object]:
        raise NotImplementedError

    def dial_failed(self, peer: NodeId | None, addresses: tuple[str, ...], now: float) -> list[object]:
        """A ``Dial`` to ``peer`` (or a ``DialAddress``, ``peer`` None) failed."""
        freed = self.dials.finished(peer, addresses)
        out = self._dial_dropped(peer, addresses, now)
        if freed:
            out += self._release_dials(now)
        return out

    def _dial_dropped(self, peer: NodeId | None, addresses: tuple[str, ...], now: float) -> list[object]:
        """Tell the machines a dial failed (reported by the driver, or dropped by the gate)."""
        if peer is None:
            return self._route(self.mesh.address_dial_failed(addresses, now), now)
        out = self._route(self.mesh.dial_failed(peer, now), now)
        out += self._route(self.caller.dial_failed(peer, now), now)
        return out

    def _gate(self, eff: DialRequest, now: float) -> list[object]:
        """Pass one dial through the gate; a dial it drops is reported failed at once."""
        started, dropped = self.dials.offer(eff, now)
        out: list[object] = list(started)
        for d in dropped:
            out += self._dial_dropped(d.peer if isinstance(d, Dial) else None, d.addresses, now)
        return out

    def _release_dials(self, now: float) -> list[object]:
        """Queued dials that may start now; those that waited too long are reported failed."""
        started, dropped = self.dials.release(now)
        out: list[object] = list(started)
        for d in dropped:
            out += self._dial_dropped(d.peer if isinstance(d, Dial) else None, d.addresses, now)
        return out

    def _failure_outputs(self, outs: list[ProbeSend | PeerFailed], now: float) -> list[object]:
        out: list[object] = []
        for o in outs:
            if type(o) is ProbeSend:
                out.append(Send(o.peer, o.message))
            else:
                assert isinstance(o, PeerFailed)
                # Close the connection and run the ordinary disconnect path (views, trees,
                # calls) now, as for any connection that failed; the driver's later report of the
                # closed connection finds nothing left to do.
                out.append(Disconnect(o.peer, "failed"))
                out += self.peer_disconnected(o.peer, now, graceful=False)
        return out
