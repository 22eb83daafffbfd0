"""Argument parsing and dispatch of the ``quicmesh`` command (see :mod:`quicmesh.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import QuicmeshError
from .client import as_client, short_lived
from .node import EXIT_ERROR, LOOPS, keygen, main_node, use_system_allocator
from .realm import add_parsers as add_realm_parsers
from .realm import env_default
from .realm import run as run_realm

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "main"]

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
    n.add_argument("--http-api", metavar="HOST:PORT",
                   help="serve the HTTP face (/v1: publish, subscribe, call, kv) here; the same as --http: one server")
    n.add_argument("--advertise", action="append", default=[], metavar="NAME=KIND",
                   help="advertise a built-in demo procedure (KIND: echo, upper, add, sleep)")
    n.add_argument("--control", action="store_true",
                   help="read JSON commands on stdin, write JSON events on stdout (scripts and tests)")
    n.add_argument("--max-clients", type=int, metavar="N",
                   help="light clients served at once (gateway.max_clients; default 10000)")
    n.add_argument("--realm-file", metavar="FILE", help="public realm file: authority mode (realm_file)")
    n.add_argument("--cert", metavar="FILE", help="this node's member certificate (cert; re-read when it changes)")
    n.add_argument("--revocations", metavar="FILE", help="revocation list file kept up to date (revocations)")
    n.add_argument("--no-local-discovery", action="store_true",
                   help="do not announce or look for nodes of this realm on the local network (discovery.local)")
    n.add_argument("--advertise-address", action="append", default=None, metavar="HOST:PORT",
                   help="announce this address instead of the computed ones (repeat; addresses.advertise_addresses)")
    n.add_argument("--relay", action="store_true",
                   help="relay for admitted members of this realm (relay.serve)")  # #13 (relay)
    n.add_argument("--relay-via", action="append", default=None, metavar="HOST:PORT",
                   help="a relay to be reachable through when behind NAT (repeat; relay.via)")
    n.add_argument("--relay-mode", choices=("auto", "always", "never"), default=None,
                   help="when to be reachable through relays (relay.mode, default auto)")
    n.add_argument("--loop", choices=LOOPS, default=None,
                   help="event loop (event_loop; default asyncio; uvloop needs the quicmesh[uvloop] extra)")
    n.add_argument("--busy-poll-us", type=int, default=None, metavar="US",
                   help="keep the event loop polling this long after each transmit: lower latency "
                        "for more CPU (busy_poll_us; default 0, off; at most 10000)")

    for name, helptext in (("call", "call a procedure"), ("pub", "publish a message"), ("sub", "print messages")):
        c = sub.add_parser(name, help=f"{helptext} through a short-lived node or as a light client")
        target = c.add_mutually_exclusive_group(required=True)
        target.add_argument("--node", metavar="HOST:PORT", help="join the mesh through this node (short-lived node)")
        target.add_argument("--connect", metavar="HOST:PORT", help="act as a light client of this gateway node")
        c.add_argument("--realm", default="default")
        c.add_argument("--key", help="client key file (--connect; created when missing, default: a fresh key)")
        c.add_argument("--gateway-id", help="the gateway's node id, checked during the handshake (--connect)")
        c.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        c.add_argument("--realm-file", default=env_default("REALM_FILE"), metavar="FILE",
                       help="public realm file (authority mode; env QUICMESH_REALM_FILE)")
        c.add_argument("--cert", default=env_default("CERT"), metavar="FILE",
                       help="member certificate of the --key node key (--node; env QUICMESH_CERT)")
        c.add_argument("--token", default=env_default("TOKEN"), metavar="FILE",
                       help="light-client token (--connect; env QUICMESH_TOKEN)")
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

    add_realm_parsers(sub)

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
            return keygen(args)
        if args.command == "node":
            if argv is None:
                use_system_allocator()
            return main_node(args)
        if args.command in ("call", "pub", "sub"):
            return asyncio.run(as_client(args) if args.connect else short_lived(args))
        if args.command in ("realm", "token"):
            return run_realm(args)
        if args.command == "status":
            from .status import main as status_main

            return status_main(["--http", args.http])
        if args.command == "demo":
            from ..demo import run_demo

            return run_demo(timeout=args.timeout)
    except QuicmeshError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE
