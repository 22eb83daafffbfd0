"""The values of the service registry (:mod:`quicmesh.core.registry`): its outputs and the
entries it holds (a module of their own, so the registry's stays short)."""

from __future__ import annotations

from dataclasses import dataclass

from ..identity import NodeId
from .effects import Send
from .registry_messages import RAdvert

__all__ = ["Broadcast", "Entry", "LookupDone", "RegistryOutcome"]


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Publish ``payload`` realm-wide on the mesh topic ``topic`` (``mesh.publish``)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LookupDone:
    """The lookup of ``name`` ended; ``waiters`` are the ids given to :meth:`Registry.lookup`.

    ``found``: whether usable providers of ``name`` are known now. The driver hands it to the
    caller planner (``Caller.lookup_done``)."""

    name: str
    waiters: tuple[int, ...]
    found: bool


RegistryOutcome = Send | Broadcast | LookupDone


@dataclass(frozen=True, slots=True)
class Entry:
    """One provider's live advertisement of one name, as held by this node."""

    provider: NodeId
    name: str
    addresses: tuple[str, ...]
    metadata: bytes
    version: int
    advert: RAdvert


@dataclass(slots=True)
class _Own:
    ttl: float
    metadata: bytes


@dataclass(slots=True)
class _Lookup:
    rid: int
    asked: tuple[NodeId, ...]
    answered: tuple[NodeId, ...]
