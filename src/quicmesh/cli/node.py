"""``quicmesh keygen`` and ``quicmesh node``: write a key; run a node until SIGINT/SIGTERM (with
``--control``, driven through the JSON-lines channel of :mod:`quicmesh.testing.control`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import NodeConfig, load_config
from ..errors import ConfigError
from ..identity import KeyPair

__all__ = ["ALLOCATOR_ENV", "EXIT_ERROR", "LOOPS", "keygen", "loop_factory", "main_node", "run_node",
           "use_system_allocator"]

LOOPS = ("asyncio", "uvloop")
"""Event loops ``quicmesh node --loop`` runs on (config ``event_loop``)."""

EXIT_ERROR = 1
"""Exit status of a command that failed (a :class:`~quicmesh.errors.QuicmeshError`, a key file in the way)."""

ALLOCATOR_ENV = "PYTHONMALLOC"


def use_system_allocator() -> None:
    """Run the daemon with Python objects in the C heap (``PYTHONMALLOC=malloc``), re-executing
    this same command line once (same pid) when the variable is not set; setting it to anything
    (``PYTHONMALLOC=pymalloc`` for CPython's own allocator) keeps the choice. Linux only.

    Why: CPython's small-object allocator keeps a 1 MiB arena as long as one object in it lives,
    and the pages it touched stay resident; under months of peer churn a node's RSS creeps up
    with nothing leaked (measured in bench/soak.py: the Python heap flat, RSS +39 bytes per churn
    cycle). In the C heap the pages freed objects leave are returned by the node's periodic
    ``malloc_trim`` (``observability.malloc_trim_interval``). Cost: ~10 % of pub/sub throughput
    at 64 B (README, "Soak")."""
    if sys.platform != "linux" or os.environ.get(ALLOCATOR_ENV) is not None:
        return
    argv = list(getattr(sys, "orig_argv", ()))
    if len(argv) < 2:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, ALLOCATOR_ENV: "malloc"})
    except OSError as exc:  # keep running with the default allocator
        logging.getLogger(__name__).warning("could not re-execute with %s=malloc: %s", ALLOCATOR_ENV, exc)


def keygen(args: argparse.Namespace) -> int:
    """``quicmesh keygen PATH [--force]``: write a new Ed25519 key and print its node id."""
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_ERROR
    kp = KeyPair.generate()
    kp.save(path)
    print(kp.node_id)
    return 0


def tune_gc(young: int) -> tuple[int, int, int]:
    """Set Python's garbage-collector thresholds for a node process: ``(young, 50, 100)``, or
    leave them when ``young`` is 0 (config ``gc_young_threshold``, #14). Returns the thresholds
    in force. ``quicmesh node`` calls it; an application embedding a node may call it too."""
    if young > 0:
        gc.set_threshold(young, 50, 100)
    return gc.get_threshold()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``name`` (``asyncio``: ``None``, the default loop). Raises
    :class:`~quicmesh.errors.ConfigError` for ``uvloop`` when it is not installed."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError("event_loop", "uvloop is not installed (pip install 'quicmesh[uvloop]')") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ConfigError("event_loop", f"must be one of {', '.join(LOOPS)}, got {name!r}")


def main_node(args: argparse.Namespace) -> int:
    """``quicmesh node ...`` from synchronous code: load the configuration, then run
    :func:`run_node` on the chosen event loop (``--loop``, else config ``event_loop``)."""
    config = node_config(args)
    factory = loop_factory(getattr(args, "loop", None) or config.event_loop)
    tune_gc(config.gc_young_threshold)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_node(args, config))


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration: the ``--config`` file, the environment, then the flags."""
    overrides: dict[str, Any] = {
        "listen": args.listen,
        "realm": args.realm,
        "bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "key_path": args.key,
        "data_dir": args.data_dir,
        "http": args.http,
        "http_api.listen": args.http_api,
        "gateway.max_clients": args.max_clients,
        "realm_file": args.realm_file,
        "cert": args.cert,
        "revocations": args.revocations,
        "discovery.local": False if getattr(args, "no_local_discovery", False) else None,  # #13 (localdisc)
        "addresses.advertise_addresses": tuple(args.advertise_address) if args.advertise_address else None,  # #13
        "relay.serve": True if getattr(args, "relay", False) else None,  # #13 (relay)
        "relay.via": tuple(args.relay_via) if getattr(args, "relay_via", None) else None,
        "relay.mode": getattr(args, "relay_mode", None),
    }
    if getattr(args, "loop", None):  # #14 (fastpath)
        overrides["event_loop"] = args.loop
    if getattr(args, "busy_poll_us", None) is not None:  # #14
        overrides["busy_poll_us"] = args.busy_poll_us
    return load_config(args.config, overrides=overrides)


async def run_node(args: argparse.Namespace, config: NodeConfig | None = None) -> int:
    """``quicmesh node ...``: run a node until SIGINT/SIGTERM (or the control channel's ``stop``)."""
    from ..runtime.node import Node
    from ..testing.control import ControlChannel, builtin_handler

    if config is None:
        config = node_config(args)
    node = await Node.start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    http = node.http_address
    try:
        for spec in args.advertise:
            name, _, kind = spec.partition("=")
            await node.advertise(name, builtin_handler(kind or "echo"))
        control: ControlChannel | None = None
        if args.control:
            control = ControlChannel(node)
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            control.emit("listening", address=node.address, node_id=str(node.id), realm=node.realm,
                         http=http, http_api=node.http_api_address,
                         loop=type(loop).__module__.partition(".")[0], gc_threshold=list(gc.get_threshold()),
                         busy_poll_us=node.config.busy_poll_us if node.busy_poll is not None else 0)
            runner = asyncio.ensure_future(control.run(reader))
            stopper = asyncio.ensure_future(control.stopping.wait())
            sig_wait = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopper, sig_wait}, return_when=asyncio.FIRST_COMPLETED)
            for t in (runner, stopper, sig_wait):
                t.cancel()
            await control.close()
        else:
            extra = f", metrics on http://{http}/metrics" if http else ""
            if node.http_api_address:
                extra += f", HTTP API on http://{node.http_api_address}/v1/"
            mode = "open realm" if node.trust.open else "authority mode"
            print(f"quicmesh node {node.id} listening on {node.address} (realm {node.realm}, {mode}){extra}",
                  flush=True)
            await stop.wait()
    finally:
        await node.stop()
    return 0
