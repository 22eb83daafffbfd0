"""One adapter per system: the few public-API calls the scenarios need, written as a user would.

Every adapter offers the same coroutines (``open``, ``subscribe``, ``unsubscribe``, ``publish``,
``pause``, ``echo``, ``serve``, ``request``, ``light_cycle``, ``close``); the scenarios in
:mod:`peerslib.scenarios` are written once against them, so every system is measured the same way.

* quicmesh: a ``quicmesh.Node`` per process (``listen=127.0.0.1:0``, local discovery off: the
  bench stays on loopback); ``call``/``advertise`` for RPC; the light client is
  ``quicmesh.Client`` through the server node's gateway.
* NATS: ``nats-py`` connections to one ``nats-server`` on 127.0.0.1; request/reply for RPC; a
  publisher is held back by nats-py's own pending buffer (2 MiB, then it waits for the socket).
* Zenoh: ``peer`` sessions (multicast scouting off), the server listening on
  ``tcp/127.0.0.1:<port>``, the client connecting to it; publishers with congestion control
  ``BLOCK`` (no drops by design); ``get``/queryable for RPC; the light client is a ``client``-mode
  session. Zenoh calls back from its own threads: ``threaded_callbacks`` tells the scenarios to
  hand results to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

OnMsg = Callable[[bytes], None]
REALM = "bench"


class Adapter:
    """The interface; see the module docstring."""

    name = "?"
    threaded_callbacks = False

    async def open(self, role: str, address: str | None) -> str:
        raise NotImplementedError

    async def subscribe(self, topic: str, on_msg: OnMsg) -> Any:
        raise NotImplementedError

    async def unsubscribe(self, handle: Any) -> int:
        """Close a subscription; returns what the subscriber's own queue dropped (0 if unknown)."""
        raise NotImplementedError

    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def prepare_publish(self, topic: str, timeout: float) -> None:
        """What a user of the system calls before publishing to a topic that has subscribers
        (nothing for most)."""

    async def pause(self) -> None:
        """Called every 256 publishes of a burst: let the loop run (flush, receive acks)."""
        await asyncio.sleep(0)

    async def echo(self, ping: str, pong: str) -> None:
        raise NotImplementedError

    async def serve(self, name: str) -> None:
        raise NotImplementedError

    async def request(self, name: str, payload: bytes, timeout: float) -> bytes:
        raise NotImplementedError

    request_blocking: Callable[[str, bytes, float], bytes] | None = None
    """A library whose API is synchronous offers its calls here; the RPC scenario then runs each
    caller in its own thread (its natural use, and faster than bridging every reply to asyncio)."""

    async def light_cycle(self, address: str, topic: str, timeout: float) -> None:
        """connect, subscribe, publish one message, receive it, unsubscribe, close."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# -- quicmesh ---------------------------------------------------------------------------------


class QuicmeshAdapter(Adapter):
    name = "quicmesh"

    def __init__(self) -> None:
        self.node: Any = None
        self._tasks: set[asyncio.Task[None]] = set()  # bounded: one per open subscription

    async def open(self, role: str, address: str | None) -> str:
        import quicmesh
        from quicmesh.cli.node import tune_gc
        from quicmesh.config import load_config

        # the node's own loader: QUICMESH_* variables apply as for `quicmesh node` (the
        # quicmesh-busy column sets QUICMESH_BUSY_POLL_US)
        cfg = load_config(overrides={"listen": "127.0.0.1:0", "realm": REALM, "bootstrap": [address] if address else [],
                                     "discovery.local": False})
        # as `quicmesh node` runs: its garbage-collector thresholds (gc_young_threshold) here,
        # its allocator (PYTHONMALLOC=malloc) in the process's environment (run.py)
        tune_gc(cfg.gc_young_threshold)
        self.node = await quicmesh.Node.start(cfg)
        if address:
            await self.node.wait_until(lambda: len(self.node.peers()) > 0, timeout=20)
        return str(self.node.address)

    async def subscribe(self, topic: str, on_msg: OnMsg) -> Any:
        sub = await self.node.subscribe(topic)

        async def reader() -> None:
            with contextlib.suppress(Exception):
                async for msg in sub:
                    on_msg(msg.payload)

        task = asyncio.ensure_future(reader())
        self._tasks.add(task)
        return (sub, task)

    async def unsubscribe(self, handle: Any) -> int:
        sub, task = handle
        dropped = int(sub.dropped)
        await sub.close()
        task.cancel()
        self._tasks.discard(task)
        return dropped

    def publish(self, topic: str, payload: bytes) -> Any:  # an awaitable, as Node.publish
        return self.node.publish(topic, payload)

    async def prepare_publish(self, topic: str, timeout: float) -> None:
        await self.node.wait_for_subscriber(topic, timeout=timeout)

    async def echo(self, ping: str, pong: str) -> None:
        sub = await self.node.subscribe(ping)
        node = self.node

        async def reply() -> None:
            with contextlib.suppress(Exception):
                async for msg in sub:
                    await node.publish(pong, msg.payload)

        self._tasks.add(asyncio.ensure_future(reply()))

    async def serve(self, name: str) -> None:
        async def handler(payload: bytes) -> bytes:
            return payload

        await self.node.advertise(name, handler)

    async def request(self, name: str, payload: bytes, timeout: float) -> bytes:
        reply: bytes = await self.node.call(name, payload, timeout=timeout)
        return reply

    async def light_cycle(self, address: str, topic: str, timeout: float) -> None:
        import quicmesh

        client = await quicmesh.Client.connect(address, realm=REALM, reconnect=False)
        try:
            sub = await client.subscribe(topic)
            await client.publish(topic, b"x")
            await asyncio.wait_for(sub.get(), timeout)
            await sub.close()
        finally:
            await client.close()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.node is not None:
            await self.node.stop()


# -- NATS -------------------------------------------------------------------------------------


class NatsAdapter(Adapter):
    name = "nats"

    def __init__(self) -> None:
        self.nc: Any = None
        self.slow_consumer_drops = 0

    async def open(self, role: str, address: str | None) -> str:
        import nats
        from nats.errors import SlowConsumerError

        async def on_error(exc: Exception) -> None:  # nats-py reports each dropped message here
            if isinstance(exc, SlowConsumerError):
                self.slow_consumer_drops += 1

        assert address is not None, "NATS needs the server's URL"
        self.nc = await nats.connect(address, allow_reconnect=False, error_cb=on_error)
        return address

    async def subscribe(self, topic: str, on_msg: OnMsg) -> Any:
        async def cb(msg: Any) -> None:
            on_msg(msg.data)

        return await self.nc.subscribe(topic, cb=cb)

    async def unsubscribe(self, handle: Any) -> int:
        await handle.unsubscribe()
        dropped, self.slow_consumer_drops = self.slow_consumer_drops, 0
        return dropped

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.nc.publish(topic, payload)

    async def echo(self, ping: str, pong: str) -> None:
        nc = self.nc

        async def cb(msg: Any) -> None:
            await nc.publish(pong, msg.data)

        await nc.subscribe(ping, cb=cb)

    async def serve(self, name: str) -> None:
        async def cb(msg: Any) -> None:
            await msg.respond(msg.data)

        await self.nc.subscribe(name, cb=cb)
        await self.nc.flush()

    async def request(self, name: str, payload: bytes, timeout: float) -> bytes:
        msg = await self.nc.request(name, payload, timeout=timeout)
        return bytes(msg.data)

    async def light_cycle(self, address: str, topic: str, timeout: float) -> None:
        import nats

        nc = await nats.connect(address, allow_reconnect=False)
        try:
            sub = await nc.subscribe(topic)
            await nc.publish(topic, b"x")
            await sub.next_msg(timeout=timeout)
            await sub.unsubscribe()
        finally:
            await nc.close()

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


# -- Zenoh ------------------------------------------------------------------------------------


def _zenoh_config(mode: str, listen: str | None, connect: str | None) -> Any:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", f'"{mode}"')
    conf.insert_json5("scouting/multicast/enabled", "false")  # loopback only: no multicast
    conf.insert_json5("scouting/gossip/enabled", "false")
    conf.insert_json5("listen/endpoints", f'["{listen}"]' if listen else "[]")
    conf.insert_json5("connect/endpoints", f'["{connect}"]' if connect else "[]")
    return conf


def _key(topic: str) -> str:
    return topic.replace(".", "/")


class ZenohAdapter(Adapter):
    name = "zenoh"
    threaded_callbacks = True

    def __init__(self) -> None:
        self.session: Any = None
        self._publishers: dict[str, Any] = {}  # bounded: one per topic the bench uses
        self._keep: list[Any] = []  # bounded: the echo subscriber and the queryable
        self.request_blocking = self._request_blocking

    async def open(self, role: str, address: str | None) -> str:
        import socket

        import zenoh

        if role == "server":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            endpoint = f"tcp/127.0.0.1:{port}"
            self.session = zenoh.open(_zenoh_config("peer", endpoint, None))
            return endpoint
        self.session = zenoh.open(_zenoh_config("peer", None, address))
        return str(address)

    async def subscribe(self, topic: str, on_msg: OnMsg) -> Any:
        def cb(sample: Any) -> None:
            on_msg(sample.payload.to_bytes())

        return self.session.declare_subscriber(_key(topic), cb)

    async def unsubscribe(self, handle: Any) -> int:
        handle.undeclare()
        return 0

    async def publish(self, topic: str, payload: bytes) -> None:
        pub = self._publishers.get(topic)
        if pub is None:
            import zenoh

            pub = self.session.declare_publisher(_key(topic), congestion_control=zenoh.CongestionControl.BLOCK)
            self._publishers[topic] = pub
        pub.put(payload)

    async def echo(self, ping: str, pong: str) -> None:
        import zenoh

        pub = self.session.declare_publisher(_key(pong), congestion_control=zenoh.CongestionControl.BLOCK)

        def cb(sample: Any) -> None:
            pub.put(sample.payload.to_bytes())

        self._keep += [pub, self.session.declare_subscriber(_key(ping), cb)]

    async def serve(self, name: str) -> None:
        def cb(query: Any) -> None:
            payload = query.payload
            query.reply(query.key_expr, payload.to_bytes() if payload is not None else b"")

        self._keep.append(self.session.declare_queryable(_key(name), cb))

    def _request_blocking(self, name: str, payload: bytes, timeout: float) -> bytes:
        for reply in self.session.get(_key(name), payload=payload, timeout=timeout):
            ok = reply.ok
            if ok is None:
                raise RuntimeError("error reply")
            return bytes(ok.payload.to_bytes())
        raise TimeoutError("no reply")

    async def request(self, name: str, payload: bytes, timeout: float) -> bytes:
        import zenoh

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()

        def settle(value: bytes | None, error: str | None) -> None:
            if fut.done():
                return
            if error is None and value is not None:
                fut.set_result(value)
            else:
                fut.set_exception(RuntimeError(error or "no reply"))

        def on_reply(reply: Any) -> None:
            ok = reply.ok
            if ok is not None:
                loop.call_soon_threadsafe(settle, ok.payload.to_bytes(), None)
            else:
                loop.call_soon_threadsafe(settle, None, "error reply")

        def on_done() -> None:  # after the last reply (or none: no queryable, timeout)
            loop.call_soon_threadsafe(settle, None, "no reply")

        self.session.get(_key(name), zenoh.handlers.Callback(on_reply, on_done), payload=payload, timeout=timeout)
        return await asyncio.wait_for(fut, timeout + 1)

    async def light_cycle(self, address: str, topic: str, timeout: float) -> None:
        import zenoh

        got = threading.Event()
        session = zenoh.open(_zenoh_config("client", None, address))
        try:
            sub = session.declare_subscriber(_key(topic), lambda _s: got.set())
            session.put(_key(topic), b"x")
            if not got.wait(timeout):
                raise TimeoutError("light client: own message not received")
            sub.undeclare()
        finally:
            session.close()

    async def close(self) -> None:
        for pub in self._publishers.values():
            pub.undeclare()
        if self.session is not None:
            self.session.close()


ADAPTERS: dict[str, type[Adapter]] = {"quicmesh": QuicmeshAdapter, "nats": NatsAdapter, "zenoh": ZenohAdapter}
