"""``quicmesh call|pub|sub``: through a short-lived node (``--node``) or as a light client of a
gateway (``--connect``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from ..config import load_config
from ..errors import TransportError

__all__ = ["as_client", "short_lived"]


async def as_client(args: argparse.Namespace) -> int:
    """``call``/``pub``/``sub`` as a light client of the gateway at ``--connect``."""
    from ..runtime.client import Client

    try:
        async with asyncio.timeout(args.timeout):
            client = await Client.connect(args.connect, realm=args.realm, key=args.key, gateway_id=args.gateway_id,
                                          call_timeout=args.timeout, token=args.token, realm_file=args.realm_file)
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


async def short_lived(args: argparse.Namespace) -> int:
    """``call``/``pub``/``sub`` through a short-lived node joined through ``--node``."""
    from ..runtime.node import Node

    # Join the realm overlay through the node (a bare connection would not be a neighbour: topic
    # swarms and provider lookups are found over the overlay).
    config = load_config(overrides={"realm": args.realm, "bootstrap": (args.node,), "realm_file": args.realm_file,
                                    "cert": args.cert, "key_path": args.key if args.cert else None})
    async with await Node.start(config) as node:
        try:
            async with asyncio.timeout(args.timeout):
                await node.connect(args.node)  # a refusal (NotAdmitted, RealmMismatch...) surfaces here
            await node.wait_until(lambda: node.ready()[0], args.timeout)
        except TimeoutError:
            raise TransportError(f"not joined through {args.node} within {args.timeout:g}s") from None
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
