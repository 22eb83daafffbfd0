"""What the web console (``/ui``, :mod:`quicmesh.observability.ui_console`) shows of a node's
insides: its peers, topics, subscriptions, services and providers, and its recent denials.

:func:`console_state` reads the driver's state (no I/O, no copies beyond the lists it returns)
and cuts every list at :data:`MAX_ITEMS` entries (the totals say how many there were), so the
document the console sends every second stays bounded however large the mesh is.
"""

from __future__ import annotations

from typing import Any

from .driver import NodeDriver

__all__ = ["MAX_ITEMS", "MAX_PROVIDERS", "console_state"]

MAX_ITEMS = 200
"""Most peers, topics, subscriptions or services listed (each list's total is reported too)."""
MAX_PROVIDERS = 16
"""Most providers listed per service."""


def console_state(node: NodeDriver) -> dict[str, Any]:
    """The console's view of ``node``: a JSON-ready dict.

    ``{"address", "peers": [{"id", "path", "outbound", "remote_address", "active"}],
    "peers_total", "topics": [{"swarm", "active", "eager", "lazy", "patterns"}], "topics_total",
    "subscriptions": [{"pattern", "handles"}], "subscriptions_total", "services": [{"name",
    "local", "providers": [id...], "providers_total"}], "services_total", "denials": {"total",
    "by_action": {action: n}, "recent": [{"n", "action", "subject"}] (newest first)}}``.

    ``path`` is ``"direct"`` or ``"relayed:<relay id>"`` (#13).
    """
    now = node._now()
    active = set(node.mesh.realm.active_peers())  # bounded: the active view (membership.active_view)
    conns = node.transport.connections()
    peers = [
        {"id": str(c.peer_id), "path": c.path, "outbound": c.outbound, "remote_address": c.remote_address,
         "active": c.peer_id in active}
        for c in sorted(conns, key=lambda c: str(c.peer_id))[:MAX_ITEMS]
    ]
    topics = []
    for key, sw in list(node.mesh.swarms.items())[:MAX_ITEMS]:
        topics.append({"swarm": key, "active": len(sw.hv.active), "eager": len(sw.pt.eager),
                       "lazy": len(sw.pt.lazy), "patterns": sorted(sw.patterns)[:MAX_ITEMS]})
    topics.sort(key=lambda t: str(t["swarm"]))
    subscriptions = [
        {"pattern": pattern, "handles": len(group)}
        for pattern, (_parsed, group) in sorted(node._by_pattern.items())[:MAX_ITEMS]
    ]
    local = set(node._handlers)  # bounded: rpc.max_services names
    held = sorted(node.services.names())[:MAX_ITEMS]
    names = sorted(set(held) | local)[:MAX_ITEMS]
    services = []
    for name in names:
        providers = [str(e.provider) for e in node.services.providers(name, now)]
        services.append({"name": name, "local": name in local, "providers": providers[:MAX_PROVIDERS],
                         "providers_total": len(providers)})
    guard = node.core.guard
    recent = [{"n": n, "action": action, "subject": subject} for n, action, subject in reversed(guard.recent_denials)]
    return {
        "address": node.address,
        "peers": peers,
        "peers_total": len(conns),
        "topics": topics,
        "topics_total": len(node.mesh.swarms),
        "subscriptions": subscriptions,
        "subscriptions_total": len(node._by_pattern),
        "services": services,
        "services_total": max(len(names), int(node.services.stats()["names"])),
        "denials": {"total": guard.denials_total, "by_action": dict(guard.denied), "recent": recent},
    }
