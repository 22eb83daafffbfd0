"""A deterministic simulator of many mesh nodes, shipped as public helpers.

* :class:`Simulator` -- event heap over a fake clock, seeded network, nodes driven through the
  same :class:`~quicmesh.core.mesh.Mesh` API and effects as the asyncio runtime.
* :class:`NetworkParams`, :class:`Latency`, :class:`Reachability` -- latency distributions, loss,
  duplication, partitions and one-way cuts.
* :mod:`quicmesh.testing.scenarios` -- scenario dataclasses (seeded) and runners returning
  :class:`Report`\\ s; ``python -m quicmesh.testing.scenarios [--large]`` prints them.

Real processes:

* :class:`NodeProcess` (:mod:`quicmesh.testing.process`) -- a ``quicmesh node --control`` child
  process and its event stream (the demo, the real-process tests and the benchmarks use it).
* :class:`ControlChannel` (:mod:`quicmesh.testing.control`) -- the JSON-lines command set such a
  process runs (loaded on first use: it imports the asyncio runtime).

In-process nodes:

* :class:`NodeGroup` (:mod:`quicmesh.testing.nodes`) -- start nodes of one realm in this process
  and stop them all on the way out (loaded on first use: it imports the asyncio runtime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .network import Latency, NetworkParams, Reachability
from .process import NodeProcess
from .sim import Delivery, SimNode, Simulator, node_identity
from .wait import WaitTimeout, eventually

if TYPE_CHECKING:
    from .control import ControlChannel
    from .nodes import NodeGroup
    from .scenarios import (
        BroadcastScenario,
        FloodScenario,
        IdentityChurnScenario,
        PartitionScenario,
        Report,
        UnsubscribeScenario,
        container_peaks,
        default_scenarios,
        overlay_connected,
        run,
    )

_SCENARIO_NAMES = frozenset({
    "BroadcastScenario", "FloodScenario", "IdentityChurnScenario", "PartitionScenario", "Report",
    "UnsubscribeScenario", "container_peaks", "default_scenarios", "overlay_connected", "run",
})


def __getattr__(name: str) -> Any:
    if name == "ControlChannel":  # loaded lazily: it imports the asyncio runtime
        from .control import ControlChannel

        return ControlChannel
    if name == "NodeGroup":  # loaded lazily: it imports the asyncio runtime
        from .nodes import NodeGroup

        return NodeGroup
    # loaded lazily so that ``python -m quicmesh.testing.scenarios`` runs the module only once
    if name in _SCENARIO_NAMES:
        from . import scenarios

        return getattr(scenarios, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BroadcastScenario",
    "ControlChannel",
    "Delivery",
    "FloodScenario",
    "IdentityChurnScenario",
    "Latency",
    "NetworkParams",
    "NodeGroup",
    "NodeProcess",
    "PartitionScenario",
    "Reachability",
    "Report",
    "SimNode",
    "Simulator",
    "UnsubscribeScenario",
    "WaitTimeout",
    "container_peaks",
    "default_scenarios",
    "eventually",
    "node_identity",
    "overlay_connected",
    "run",
]
