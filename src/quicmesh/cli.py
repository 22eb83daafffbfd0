"""The ``quicmesh`` command line.

``quicmesh keygen PATH``                     write a new Ed25519 node key (mode 0600)
``quicmesh node --listen HOST:PORT ...``      run a node until SIGINT/SIGTERM
``quicmesh call --node HOST:PORT NAME DATA``  call a procedure through a short-lived node
``quicmesh pub --node HOST:PORT TOPIC DATA``  publish through a short-lived node
``quicmesh sub --node HOST:PORT TOPIC``       print a topic's messages through a short-lived node
``quicmesh call|pub|sub --connect HOST:PORT``  the same as a light client of a gateway node
``quicmesh status --http HOST:PORT``          show a running node's health as tables
``quicmesh demo``                             three local node processes exchange messages and a call

Errors are printed as one line (``error: Type: message``) with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import NodeConfig, load_config
from .errors import QuicmeshError, TransportError
from .identity import KeyPair

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quicmesh", description="A peer-to-peer mesh for Python services over QUIC.")
    p.add_argument("--version", action="version", version=f"quicmesh {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="write a new Ed25519 node key")
    k.add_argument("path", help="key file to create (mode 0600)")
    k.add_argument("--force", action="store_true", help="replace an existing file")

    n = sub.add_parser("node", help="run a node until SIGINT/SIGTERM")
    n.add_argument("--listen", help="HOST:PORT to listen on (UDP); default 127.0.0.1:0")
    n.add_argument("--realm", help="mesh name; nodes of other realms are refused")
    n.add_argument("--bootstrap", action="append", default=None, metavar="HOST:PORT", help="peer to join (repeat)")
    n.add_argument("--key", help="Ed25519 key file (created when missing)")
    n.add_argument("--data-dir", help="directory for the key and the store")
    n.add_argument("--config", help="TOML configuration file")
    n.add_argument("--http", metavar="HOST:PORT", help="serve /metrics and /health here (loopback)")
    n.add_argument("--advertise", action="append", default=[], metavar="NAME=KIND",
                   help="advertise a built-in demo procedure (KIND: echo, upper, add, sleep)")
    n.add_argument("--control", action="store_true",
                   help="read JSON commands on stdin, write JSON events on stdout (scripts and tests)")
    n.add_argument("--max-clients", type=int, metavar="N",
                   help="light clients served at once (gateway.max_clients; default 10000)")

    for name, helptext in (("call", "call a procedure"), ("pub", "publish a message"), ("sub", "print messages")):
        c = sub.add_parser(name, help=f"{helptext} through a short-lived node or as a light client")
        target = c.add_mutually_exclusive_group(required=True)
        target.add_argument("--node", metavar="HOST:PORT", help="join the mesh through this node (short-lived node)")
        target.add_argument("--connect", metavar="HOST:PORT", help="act as a light client of this gateway node")
        c.add_argument("--realm", default="default")
        c.add_argument("--key", help="client key file (--connect; created when missing, default: a fresh key)")
        c.add_argument("--gateway-id", help="the gateway's node id, checked during the handshake (--connect)")
        c.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        if name == "call":
            c.add_argument("name")
            c.add_argument("payload")
        elif name == "pub":
            c.add_argument("topic")
            c.add_argument("payload")
        else:
            c.add_argument("topic")
            c.add_argument("--count", type=int, default=0, help="exit after N messages (0: run until Ctrl-C)")

    s = sub.add_parser("status", help="show a running node's health")
    s.add_argument("--http", required=True, metavar="HOST:PORT")

    d = sub.add_parser("demo", help="three local nodes exchange messages and a call")
    d.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quicmesh`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "node":
            if argv is None:
                _use_system_allocator()
            return asyncio.run(_node(args))
        if args.command in ("call", "pub", "sub"):
            return asyncio.run(_as_client(args) if args.connect else _short_lived(args))
        if args.command == "status":
            from .observability.status import main as status_main

            return status_main(["--http", args.http])
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(timeout=args.timeout)
    except QuicmeshError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


ALLOCATOR_ENV = "PYTHONMALLOC"


def _use_system_allocator() -> None:
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


def _keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_ERROR
    kp = KeyPair.generate()
    kp.save(path)
    print(kp.node_id)
    return 0


async def _node(args: argparse.Namespace) -> int:
    from .runtime.control import ControlChannel, builtin_handler
    from .runtime.node import Node

    overrides: dict[str, Any] = {
        "listen": args.listen,
        "realm": args.realm,
        "bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "key_path": args.key,
        "data_dir": args.data_dir,
        "http": args.http,
        "gateway.max_clients": args.max_clients,
    }
    config = load_config(args.config, overrides=overrides)
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
            control.emit("listening", address=node.address, node_id=str(node.id), realm=config.realm,
                         http=http)
            runner = asyncio.ensure_future(control.run(reader))
            stopper = asyncio.ensure_future(control.stopping.wait())
            sig_wait = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopper, sig_wait}, return_when=asyncio.FIRST_COMPLETED)
            for t in (runner, stopper, sig_wait):
                t.cancel()
            await control.close()
        else:
            extra = f", metrics on http://{http}/metrics" if http else ""
            print(f"quicmesh node {node.id} listening on {node.address} (realm {config.realm}){extra}", flush=True)
            await stop.wait()
    finally:
        await node.stop()
    return 0


async def _as_client(args: argparse.Namespace) -> int:
    """``call``/``pub``/``sub`` as a light client of the gateway at ``--connect``."""
    from .runtime.client import Client

    try:
        async with asyncio.timeout(args.timeout):
            client = await Client.connect(args.connect, realm=args.realm, key=args.key, gateway_id=args.gateway_id,
                                          call_timeout=args.timeout)
    except TimeoutError:
        raise TransportError(f"no connection to {args.connect} within {args.timeout:g}s") from None
    async with client:
        if args.command == "call":
            reply = await client.call(args.name, args.payload.encode(), timeout=args.timeout)
            sys.stdout.write(reply.decode(errors="replace") + "\n")
            return 0
        if args.command == "pub":
            await client.publish(args.topic, args.payload.encode(), confirm=True)
            return 0
        async with await client.subscribe(args.topic) as sub:
            print(f"subscribed to {args.topic} via {args.connect}", file=sys.stderr, flush=True)
            await _print_messages(sub, args.count)
        return 0


async def _print_messages(sub: AsyncIterator[Any], count: int | None) -> None:
    """Print ``topic payload`` lines as messages arrive; stop after ``count`` (if set)."""
    seen = 0
    async for msg in sub:
        sys.stdout.write(f"{msg.topic} {msg.payload.decode(errors='replace')}\n")
        sys.stdout.flush()
        seen += 1
        if count and seen >= count:
            break


async def _short_lived(args: argparse.Namespace) -> int:
    from .runtime.node import Node

    # Join the realm overlay through the node (a bare connection would not be a neighbour: topic
    # swarms and provider lookups are found over the overlay).
    async with await Node.start(NodeConfig(realm=args.realm, bootstrap=(args.node,))) as node:
        await node.wait_until(lambda: node.ready()[0], args.timeout)
        if args.command == "call":
            await node.wait_for_provider(args.name, args.timeout)
            reply = await node.call(args.name, args.payload.encode(), timeout=args.timeout)
            sys.stdout.write(reply.decode(errors="replace") + "\n")
            return 0
        if args.command == "pub":
            await node.wait_for_subscriber(args.topic, args.timeout)
            await node.publish(args.topic, args.payload.encode())
            return 0
        async with await node.subscribe(args.topic) as sub:
            await _print_messages(sub, args.count)
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
