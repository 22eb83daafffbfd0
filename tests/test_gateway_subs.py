"""The gateway's shared client subscriptions (``quicmesh.runtime.gateway_subs``), against a stub
node and recorded frames: members join before and after the node subscription opens, a failed
open answers each member, a member whose client cannot take a frame leaves, the last one
closes the node subscription, and every budget comes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quicmesh.config import GatewayConfig
from quicmesh.core.gateway_messages import GError, GMessage, GOk, GSubscribe
from quicmesh.core.wire import Message as WireMessage
from quicmesh.errors import LimitExceeded
from quicmesh.identity import KeyPair
from quicmesh.runtime.gateway_budget import ClientBudgets, GatewayStats, Session
from quicmesh.runtime.gateway_subs import FRAME_OVERHEAD, Fan, Member, Subscriptions
from quicmesh.runtime.message import Message
from quicmesh.testing.wait import eventually

SENDER = KeyPair.from_seed(b"\x05" * 32).node_id


class StubSub:
    """A node subscription: an async iterator fed by ``feed``, closed by ``close``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.closed = False
        self.dropped = 0
        """Messages the node's queue dropped, as a node subscription counts them."""

    def feed(self, topic: str, payload: bytes, seq: int) -> None:
        self.queue.put_nowait(Message(topic, payload, SENDER, seq))

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    def __aiter__(self) -> StubSub:
        return self

    async def __anext__(self) -> Message:
        return await self.queue.get()

    async def close(self) -> None:
        self.closed = True


class StubNode:
    def __init__(self) -> None:
        self.subs: list[StubSub] = []
        self.opened = asyncio.Event()
        self.gate: asyncio.Event | None = None
        """When set, ``subscribe`` waits for it (an open in progress)."""
        self.fail: Exception | None = None

    async def subscribe(self, pattern: str, *, queue_size: int | None = None, group: str | None = None) -> StubSub:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        sub = StubSub()
        self.subs.append(sub)
        self.opened.set()
        return sub


class Host(Subscriptions):
    """The subscription handling with recorded frames; ``refuse`` names sessions whose frames
    are refused (as a slow consumer's are)."""

    def __init__(self) -> None:
        self._node: Any = StubNode()
        self._cfg = GatewayConfig(max_client_subscriptions=4)
        self.stats = GatewayStats()
        self.budgets = ClientBudgets(self._cfg)
        self._fans: dict[str, Fan] = {}
        self.sent: list[tuple[Session, WireMessage]] = []
        self.refuse: set[int] = set()

    def _send(self, s: Session, message: WireMessage, size: int = FRAME_OVERHEAD) -> bool:
        if id(s) in self.refuse:
            return False
        self.sent.append((s, message))
        return True

    def _refuse_limit(self, s: Session, req_id: int, limit: str, capacity: int) -> None:
        self._send(s, GError(req_id, "limit", limit))

    @property
    def node(self) -> StubNode:
        return self._node  # type: ignore[no-any-return]

    def frames(self, s: Session) -> list[WireMessage]:
        return [m for x, m in self.sent if x is s]


def session() -> Session:
    return Session(KeyPair.generate().node_id, conn=None)  # type: ignore[arg-type]


async def test_clients_of_one_pattern_share_one_node_subscription() -> None:
    h = Host()
    a, b = session(), session()
    h._subscribe(a, GSubscribe(1, 10, "lobby.>"))
    h._subscribe(b, GSubscribe(1, 20, "lobby.>"))
    await eventually(lambda: len(h.frames(a)) == 1 and len(h.frames(b)) == 1)
    assert len(h.node.subs) == 1 and len(h._fans) == 1 and h.client_subscriptions == 1
    assert h.frames(a) == [GOk(1)] and h.frames(b) == [GOk(1)]  # answered once the node subscription opened
    sub = h.node.subs[0]
    sub.feed("lobby.x", b"one", 1)
    await eventually(lambda: len(h.frames(a)) == 2 and len(h.frames(b)) == 2)
    assert h.frames(a)[1] == GMessage(10, "lobby.x", b"one", SENDER.raw, 1)
    assert h.frames(b)[1] == GMessage(20, "lobby.x", b"one", SENDER.raw, 1)
    # a third joins the open fan: GOk at once, then only the later messages
    c = session()
    h._subscribe(c, GSubscribe(7, 30, "lobby.>"))
    assert h.frames(c) == [GOk(7)]
    sub.feed("lobby.y", b"two", 2)
    await eventually(lambda: len(h.frames(c)) == 2)
    assert h.frames(c)[1] == GMessage(30, "lobby.y", b"two", SENDER.raw, 2)
    assert h.stats.messages_forwarded_total == 5 and h.budgets.subscriptions == 3
    # members leave one by one (unsubscribe, and a client's close); the last closes the node's
    a.subs.pop(10).cancel()
    for handle in list(b.subs.values()):
        handle.cancel()
    assert len(h._fans) == 1 and not sub.closed and h.budgets.subscriptions == 1
    c.subs.pop(30).cancel()
    assert h._fans == {} and h.client_subscriptions == 0 and h.budgets.subscriptions == 0
    await eventually(lambda: sub.closed)
    assert all(not s.subs and not s.sub_swarms and not s.held.sub_topics for s in (a, b, c))
    # the pattern again: a new fan, a new node subscription
    h._subscribe(a, GSubscribe(2, 11, "lobby.>"))
    await eventually(lambda: len(h.node.subs) == 2 and h.frames(a)[-1] == GOk(2))


async def test_a_failed_open_answers_every_member_and_gives_back_their_budgets() -> None:
    h = Host()
    h.node.gate = asyncio.Event()
    h.node.fail = LimitExceeded("pubsub.max_subscriptions", 1)
    a, b = session(), session()
    h._subscribe(a, GSubscribe(3, 1, "t.>"))
    h._subscribe(b, GSubscribe(4, 1, "t.>"))
    assert h.budgets.subscriptions == 2 and h.client_subscriptions == 1
    h.node.gate.set()
    await eventually(lambda: len(h.frames(a)) == 1 and len(h.frames(b)) == 1)
    for s, req in ((a, 3), (b, 4)):
        err = h.frames(s)[0]
        assert isinstance(err, GError) and err.id == req and err.code == "limit", err
        assert not s.subs and not s.sub_swarms
    assert h._fans == {} and h.budgets.subscriptions == 0 and h.client_subscriptions == 0


async def test_a_member_whose_client_takes_no_frame_leaves_and_the_others_go_on() -> None:
    h = Host()
    a, b = session(), session()
    h._subscribe(a, GSubscribe(1, 1, "feed"))
    h._subscribe(b, GSubscribe(1, 2, "feed"))
    await h.node.opened.wait()
    await eventually(lambda: len(h.frames(b)) == 1)
    h.refuse.add(id(a))  # a slow consumer: the gateway closes it and refuses its frames
    sub = h.node.subs[0]
    for i in range(3):
        sub.feed("feed", b"%d" % i, i + 1)
    await eventually(lambda: len(h.frames(b)) == 4)
    assert not a.subs and h.budgets.subscriptions == 1 and len(h._fans["feed"].members) == 1
    assert [m.seq for m in h.frames(b)[1:] if isinstance(m, GMessage)] == [1, 2, 3]
    assert h.stats.messages_forwarded_total == 3


async def test_group_members_keep_their_own_node_subscription() -> None:
    h = Host()
    a, b = session(), session()
    h._subscribe(a, GSubscribe(1, 1, "jobs", group="workers"))
    h._subscribe(b, GSubscribe(1, 1, "jobs", group="workers"))
    await eventually(lambda: len(h.node.subs) == 2)
    assert h._fans == {} and h.client_subscriptions == 2
    assert all(isinstance(s.subs[1], asyncio.Task) for s in (a, b))
    for s in (a, b):
        s.subs.pop(1).cancel()
    await eventually(lambda: all(x.closed for x in h.node.subs) and h.budgets.subscriptions == 0)


async def test_subscription_limits_and_ids_hold_for_shared_ones() -> None:
    h = Host()
    a = session()
    for sid in range(4):
        h._subscribe(a, GSubscribe(sid + 1, sid, "same"))
    h._subscribe(a, GSubscribe(9, 1, "other"))  # the id is in use
    h._subscribe(a, GSubscribe(10, 5, "other"))  # the fifth: past max_client_subscriptions
    await eventually(lambda: len(h.frames(a)) == 6)
    errors = [m for m in h.frames(a) if isinstance(m, GError)]
    assert [(e.id, e.code) for e in errors] == [(9, "invalid"), (10, "limit")]
    assert len(h._fans) == 1 and len(h._fans["same"].members) == 4 and len(h.node.subs) == 1
    # one client, four subscriptions of the pattern: each message once per subscription id
    h.node.subs[0].feed("same", b"x", 1)
    await eventually(lambda: len([m for m in h.frames(a) if isinstance(m, GMessage)]) == 4)
    assert sorted(m.sid for m in h.frames(a) if isinstance(m, GMessage)) == [0, 1, 2, 3]
    assert isinstance(a.subs[0], Member)


@pytest.mark.parametrize("unsubscribe", [True, False])
async def test_leaving_while_the_open_is_in_progress_opens_nothing_for_it(unsubscribe: bool) -> None:
    h = Host()
    h.node.gate = asyncio.Event()
    a = session()
    h._subscribe(a, GSubscribe(1, 1, "slow"))
    fan = h._fans["slow"]
    if unsubscribe:
        a.subs.pop(1).cancel()
    else:
        for handle in list(a.subs.values()):
            handle.cancel()
    assert h._fans == {} and h.budgets.subscriptions == 0
    h.node.gate.set()
    await eventually(lambda: fan.task is None)
    assert h.frames(a) == [] and all(x.closed for x in h.node.subs)



async def test_waiting_messages_go_out_client_by_client() -> None:
    """Messages waiting in the fan's subscription are taken at once and written member by member
    in one step, so that each client's frames leave in one flush (written message by message,
    each flush carried one or two frames, and the gateway spent 5x the CPU per delivery)."""
    h = Host()
    sessions = [session() for _ in range(3)]
    for s in sessions:
        h._subscribe(s, GSubscribe(1, 1, "burst"))
    await eventually(lambda: len(h.sent) == 3)
    h.sent.clear()
    sub = h.node.subs[0]
    steps = 0

    async def ticker() -> None:
        nonlocal steps
        while True:  # bounded: cancelled below
            steps += 1
            await asyncio.sleep(0)

    t = asyncio.ensure_future(ticker())
    for i in range(10):
        sub.feed("burst", b"%d" % i, i + 1)
    before = steps
    await eventually(lambda: len(h.sent) == 30, interval=0)
    t.cancel()
    assert steps - before <= 2  # one step of the fan's task (the ticker's turn around it)
    order = [id(s) for s, _ in h.sent]
    assert order == [id(s) for s in sessions for _ in range(10)]
    for s in sessions:
        assert [m.seq for m in h.frames(s) if isinstance(m, GMessage)] == list(range(1, 11))
