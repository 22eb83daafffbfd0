"""The work-queue group commands of :class:`~quicmesh.core.node.NodeCore` (a mixin, so the
composition module stays short): memberships as registry adverts, takes and releases of
delivered messages. See :mod:`quicmesh.core.groups`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..identity import NodeId
from .grammar import parse_pattern
from .groups import Groups, check_group, group_name

if TYPE_CHECKING:
    from .guard import Guard
    from .registry import Registry

__all__ = ["GroupCommands"]


class GroupCommands:
    """``group_join``, ``group_leave``, ``group_taken``, ``group_released`` of a node core."""

    groups: Groups
    guard: Guard
    services: Registry

    def _route(self, effects: Iterable[object], now: float) -> list[object]:
        raise NotImplementedError

    def group_join(self, group: str, pattern: str, now: float) -> list[object]:
        """A local member of work-queue group ``group`` on ``pattern`` opened: the first one
        advertises the membership realm-wide (raises ``ValueError`` for a bad group or pattern
        and ``PermissionDenied`` without ``subscribe`` permission on the pattern)."""
        check_group(group)
        parse_pattern(pattern)
        self.guard.check_own("subscribe", pattern)
        if not self.groups.join(group, pattern):
            return []
        self.groups.changed()
        try:
            return self._route(self.services.advertise(group_name(group, pattern), now), now)
        except BaseException:
            self.groups.leave(group, pattern, now)
            raise

    def group_leave(self, group: str, pattern: str, now: float) -> list[object]:
        """A local member closed: own messages given to it go to other members; the last local
        member withdraws the advert."""
        last, out = self.groups.leave(group, pattern, now)
        if last:
            out += self.services.unadvertise(group_name(group, pattern), now)
            self.groups.changed()
        return self._route(out, now)

    def group_taken(self, origin: NodeId, mid: int, now: float) -> list[object]:
        """The application took group message ``mid`` of ``origin`` (from a ``GroupDeliver``)."""
        return self._route(self.groups.taken(origin, mid, now), now)

    def group_released(self, origin: NodeId, mid: int, now: float) -> list[object]:
        """A group message handed out here could not be taken (it goes to another member)."""
        return self._route(self.groups.released(origin, mid, now), now)
