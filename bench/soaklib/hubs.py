"""Hubs (long-lived ``quicmesh node --control --http`` processes) and what is read from them:
/metrics samples, /health container states, ``memory`` checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicmesh.testing.process import NodeProcess

from .settings import HISTORY, REALM

__all__ = [
    "SUMMED",
    "Hub",
    "health_state",
    "http_get",
    "memory",
    "parse_metrics",
    "sampler_loop",
    "spawn_hub",
    "wait_quiet",
]


@dataclass
class Hub:
    """A hub process, whether it runs tracemalloc, its checkpoints, samples and cycles served."""

    proc: NodeProcess
    http: str
    traced: bool
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    cycles: int = 0


async def spawn_hub(name: str, bootstrap: Sequence[str], env: Mapping[str, str], stderr: Path) -> Hub:
    """Start a hub (``quicmesh node --control --http``, advertising the soak procedures)."""
    args = [sys.executable, "-m", "quicmesh", "node", "--control", "--listen", "127.0.0.1:0", "--realm", REALM,
            "--http", "127.0.0.1:0", "--advertise", "soak.echo=echo", "--advertise", "soak.sleep=sleep"]
    for b in bootstrap:
        args += ["--bootstrap", b]
    with stderr.open("wb") as err:  # a file, not a pipe nobody reads during a long run
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, **env}, limit=1 << 22,
        )
    node = NodeProcess(name, proc)
    ev = await node.expect("listening", timeout=30)
    node.address, node.node_id = ev["address"], ev["node_id"]
    return Hub(node, str(ev["http"]), traced=False)


async def http_get(address: str, path: str, timeout: float = 5.0) -> str:
    """GET ``path`` from ``address``; the body of a 200 or 503 answer."""
    host, _, port = address.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.1 503"):
        raise RuntimeError(f"GET {path}: {head[:80]!r}")
    return body.decode()


def parse_metrics(text: str) -> dict[str, Any]:
    """RSS, fds, tasks, connections and every container's size from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"containers": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "quicmesh_container_size":
                out["containers"][s.labels["container"]] = out["containers"].get(s.labels["container"], 0) + s.value
            elif s.name == "quicmesh_process_resident_memory_bytes":
                out["rss"] = s.value
            elif s.name == "quicmesh_process_open_fds":
                out["fds"] = s.value
            elif s.name == "quicmesh_asyncio_tasks":
                out["tasks"] = s.value
            elif s.name == "quicmesh_connections":
                out["connections"] = s.value
    return out


async def sampler_loop(hubs: Sequence[Hub], t0: float, interval: float, stop: asyncio.Event) -> None:
    """Scrape every hub's /metrics every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        for hub in hubs:
            with contextlib.suppress(Exception):
                sample = parse_metrics(await http_get(hub.http, "/metrics"))
                sample["t"] = time.monotonic() - t0
                hub.samples.append(sample)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def memory(hub: Hub, **fields: Any) -> dict[str, Any]:
    """A ``memory`` checkpoint of ``hub`` (control command fields as keyword arguments)."""
    return await hub.proc.request("memory", "memory", wait=60, **fields)


async def wait_quiet(hubs: Sequence[Hub], baseline: Mapping[int, int], timeout: float) -> bool:
    """Wait (bounded) until every hub holds its pre-churn number of connections."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [(await h.proc.request("health", "health"))["health"]["connections"]["open"] for h in hubs]
        if all(c == baseline[i] for i, c in enumerate(counts)):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


SUMMED = (("plumtree.eager", "plumtree.lazy"),)
"""Containers compared as one sum: a swarm neighbour moves between Plumtree's eager and lazy sets
(PRUNE / GRAFT) without being added or lost."""


def health_state(doc: Mapping[str, Any]) -> dict[str, int]:
    """Container sizes (Plumtree's eager and lazy sets summed), fds and tasks from a /health document."""
    state = {name: int(c["size"]) for name, c in doc["containers"].items() if name != HISTORY}
    for group in SUMMED:
        if any(n in state for n in group):
            state["+".join(group)] = sum(state.pop(n, 0) for n in group)
    state["process.open_fds"] = int(doc["process"]["open_fds"] or 0)
    state["process.asyncio_tasks"] = int(doc["process"]["asyncio_tasks"] or 0)
    return state
