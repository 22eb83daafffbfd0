"""Shared by the tests of opening maps and logs: hold a node's store reads until the test lets them go."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from quicmesh.runtime.node import Node


@dataclass
class HeldLoads:
    """``node.logs``' loads from the store, each held at its start until :attr:`gate` is set;
    :attr:`entered` is set when the first one started."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)


def hold_loads(node: Node) -> HeldLoads:
    """Make ``node``'s map and log loads wait on the returned :class:`HeldLoads` gate (a slow store)."""
    held = HeldLoads()
    load = node.logs._load

    async def slow_load(state: Any) -> None:
        held.entered.set()
        await held.gate.wait()
        await load(state)

    node.logs._load = slow_load  # type: ignore[method-assign]
    return held
