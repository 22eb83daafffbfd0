"""HyParView: join, forward join, views bounds, promotion, timeouts, shuffle; the mesh's join
retries and per-peer cleanup."""

from __future__ import annotations

import itertools
from collections import deque
from random import Random

from quicmesh.bounded import ContainerRegistry
from quicmesh.config import AddressBookConfig, MembershipConfig, NodeConfig
from quicmesh.core.addressbook import AddressBook
from quicmesh.core.connections import DIAL_TIMEOUT, LINGER, Connections
from quicmesh.core.effects import Dial, DialAddress, Disconnect, Send
from quicmesh.core.membership import HvOut, HvSend, HyParView, NeighborDown, NeighborUp
from quicmesh.core.mesh import Mesh
from quicmesh.core.mesh_messages import MFind, MFound, MJoin, MLeave, MNeighbor, MShuffle, MShuffleReply, PeerInfo
from quicmesh.identity import KeyPair, NodeId


def nid(i: int) -> NodeId:
    return KeyPair.from_seed((i + 1000).to_bytes(32, "big")).node_id


class Net:
    """Instant, lossless delivery between HyParView instances (FIFO)."""

    def __init__(self, n: int, registry: ContainerRegistry, cfg: MembershipConfig | None = None) -> None:
        self.cfg = cfg or MembershipConfig()
        self.hv: dict[NodeId, HyParView] = {}
        for i in range(n):
            me = nid(i)
            book = AddressBook(me, AddressBookConfig(), registry)
            self.hv[me] = HyParView(me, (f"a:{i}",), "", self.cfg, book, Random(i), registry)
        self.queue: deque[tuple[NodeId, HvSend]] = deque()
        self.ups: list[tuple[NodeId, NodeId]] = []

    def feed(self, src: NodeId, outs: list[HvOut]) -> None:
        for o in outs:
            if isinstance(o, HvSend):
                self.queue.append((src, o))
            elif isinstance(o, NeighborUp):
                self.ups.append((src, o.peer))

    def run(self, now: float = 0.0) -> int:
        n = 0
        while self.queue:
            src, o = self.queue.popleft()
            dst = self.hv.get(o.peer)
            if dst is None:
                continue
            n += 1
            self.feed(o.peer, dst.handle(src, o.message, now))
        return n


def test_join_builds_bounded_symmetric_views(registry: ContainerRegistry) -> None:
    net = Net(40, registry)
    ids = list(net.hv)
    for i, me in enumerate(ids[1:], 1):
        net.hv[me].book.add(ids[0], ("a:0",), 0.0)
        net.feed(me, net.hv[me].join_via(ids[0], float(i)))
        net.run(float(i))
    for me, hv in net.hv.items():
        assert 1 <= len(hv.active) <= 5
        assert len(hv.passive) <= 30
        assert me not in hv.active and me not in hv.passive
        assert not (set(hv.active_peers()) & set(hv.passive_peers()))
    asym = sum(1 for me, hv in net.hv.items() for p in hv.active_peers() if me not in net.hv[p].active)
    assert asym == 0
    # forward joins gave late joiners more than the contact
    assert sum(len(hv.active) for hv in net.hv.values()) / 40 > 3


def test_failure_promotes_from_passive_with_priority(registry: ContainerRegistry) -> None:
    net = Net(3, registry)
    a, b, c = list(net.hv)
    hv = net.hv[a]
    hv.book.add(b, ("a:1",), 0.0)
    hv.book.add(c, ("a:2",), 0.0)
    net.feed(a, hv.join_via(b, 0.0))
    net.run()
    assert hv.is_active(b)
    hv.add_candidate(c)
    out = hv.peer_failed(b, 1.0, lost=True)
    assert NeighborDown(b) in out
    sends = [o for o in out if isinstance(o, HvSend)]
    assert len(sends) == 1 and sends[0].peer == c
    assert isinstance(sends[0].message, MNeighbor) and sends[0].message.high is True
    assert b not in hv.active and b not in hv.passive and b in hv.lost


def test_a_lost_peer_is_forgotten_at_its_ttl_not_at_the_next_reconnect_round(registry: ContainerRegistry) -> None:
    """The ``lost`` map's expiry is one of the machine's deadlines: its size (a metric) is back to 0
    ``lost_ttl`` after the loss, as the soak's recovery check wants, even when no reconnect round
    falls between (they are 3.75-6.25 s apart; the soak's TTL is 5 s and its limit 10 s)."""
    net = Net(2, registry, MembershipConfig(lost_ttl=2.0))
    a, b = list(net.hv)
    hv = net.hv[a]
    hv.book.add(b, ("a:1",), 0.0)
    net.feed(a, hv.join_via(b, 0.0))
    net.run()
    hv.next_reconnect = 100.0  # no reconnect round before the TTL is up
    hv.peer_failed(b, 10.0, lost=True)
    assert b in hv.lost and len(hv.lost) == 1
    deadline = hv.next_deadline()
    assert deadline is not None and deadline <= 12.0, deadline
    hv.handle_timer(11.9)
    assert b in hv.lost, "kept for its TTL"
    hv.handle_timer(12.0)
    assert len(hv.lost) == 0 and hv.next_reconnect == 100.0, "forgotten at the TTL, not by a reconnect round"


def test_neighbor_request_timeout_drops_candidate_and_tries_next(registry: ContainerRegistry) -> None:
    net = Net(1, registry)
    (a,) = list(net.hv)
    hv = net.hv[a]
    for i in (1, 2, 3, 4, 5, 6):
        hv.book.add(nid(i), (f"a:{i}",), 0.0)
        hv.add_candidate(nid(i))
    out = hv.handle_timer(hv.next_repair)
    asked = {o.peer for o in out if isinstance(o, HvSend)}
    assert len(asked) == 5 and len(hv.pending) == 5
    t = hv.next_repair - 2.0 + 0.5 + 1e-9  # the request was sent at next_repair - 2
    out = hv.handle_timer(t)
    assert not (asked & set(hv.passive_peers()))  # unanswered candidates left the passive view
    again = {o.peer for o in out if isinstance(o, HvSend)}
    assert again == {nid(i) for i in range(1, 7)} - asked


def test_full_active_view_refuses_low_priority_but_accepts_high(registry: ContainerRegistry) -> None:
    net = Net(1, registry)
    (a,) = list(net.hv)
    hv = net.hv[a]
    for i in range(1, 6):
        hv.handle(nid(i), MNeighbor("", True, [f"a:{i}"]), 0.0)
    assert len(hv.active) == 5
    out = hv.handle(nid(9), MNeighbor("", False, ["a:9"]), 0.0)
    assert nid(9) not in hv.active and nid(9) in hv.passive
    out = hv.handle(nid(10), MNeighbor("", True, ["a:10"]), 0.0)
    assert nid(10) in hv.active and len(hv.active) == 5
    evicted = [(o.peer, o.message) for o in out if isinstance(o, HvSend) and isinstance(o.message, MLeave)]
    assert len(evicted) == 1 and evicted[0][1].alive is True
    assert evicted[0][0] in hv.passive


def test_an_island_of_two_asks_with_high_priority_once_refused(registry: ContainerRegistry) -> None:
    """Two survivors of a massive failure linked only to each other: every candidate they knew
    was a full view that refused NEIGHBOR(low), so the pair stayed an island (20 s in the
    simulator, 150 nodes, 80 % failed, seed 18). A node with one active peer whose request of low
    priority was refused asks with high priority next, which a full view must accept; with two
    or more active peers it asks low as in the paper."""
    net = Net(9, registry)
    a, b, full, *others = list(net.hv)
    hv = net.hv[a]
    hv.book.add(b, ("a:1",), 0.0)
    net.feed(a, hv.join_via(b, 0.0))
    net.run()
    assert hv.active_peers() == [b]
    for i, o in enumerate(others[:5]):  # the candidate's view is full
        net.hv[full].handle(o, MNeighbor("", True, [f"a:{i + 3}"]), 0.0)
    assert len(net.hv[full].active) == 5
    hv.book.add(full, ("a:2",), 0.0)
    hv.add_candidate(full)

    def ask() -> list[tuple[NodeId, bool]]:
        out = hv.handle_timer(hv.next_repair)
        net.feed(a, out)
        net.run(hv.next_repair)
        return [(o.peer, o.message.high) for o in out
                if isinstance(o, HvSend) and isinstance(o.message, MNeighbor)]

    assert ask() == [(full, False)]  # first as the paper has it: refused by the full view
    assert full not in hv.active and full in hv.passive
    assert ask() == [(full, True)]  # refused with one active peer: high, accepted
    assert full in hv.active and a in net.hv[full].active and len(net.hv[full].active) == 5
    # two active peers: low priority again
    c = others[5]
    hv.book.add(c, ("a:8",), 0.0)
    hv.add_candidate(c)
    asks = ask()
    assert asks and all(not high for _, high in asks), asks


def test_shuffle_walk_and_reply(registry: ContainerRegistry) -> None:
    net = Net(1, registry)
    (a,) = list(net.hv)
    hv = net.hv[a]
    for i in range(1, 6):
        hv.handle(nid(i), MNeighbor("", True, [f"a:{i}"]), 0.0)
    for i in range(10, 20):
        hv.book.add(nid(i), (f"a:{i}",), 0.0)
        hv.add_candidate(nid(i))
    out = hv.handle_timer(hv.next_shuffle)
    shuf = [o for o in out if isinstance(o, HvSend) and isinstance(o.message, MShuffle)]
    assert len(shuf) == 1
    msg = shuf[0].message
    assert isinstance(msg, MShuffle) and msg.ttl == 6 and len(msg.peers) == 3 + 4
    # at the end of a walk: reply with as many passive peers, merge the received ones
    incoming = [PeerInfo(nid(i).raw, [f"n:{i}"]) for i in range(30, 34)]
    out = hv.handle(nid(1), MShuffle("", nid(40).raw, ["o:40"], 0, incoming), 1.0)
    reply = [(o.peer, o.message) for o in out if isinstance(o, HvSend) and isinstance(o.message, MShuffleReply)]
    assert len(reply) == 1 and reply[0][0] == nid(40)
    assert len(reply[0][1].peers) == 4
    assert {nid(i) for i in range(30, 34)} <= set(hv.passive_peers())
    assert len(hv.passive) <= 30


def test_leave_and_close_release_everything(registry: ContainerRegistry) -> None:
    net = Net(1, registry)
    (a,) = list(net.hv)
    hv = net.hv[a]
    for i in range(1, 4):
        hv.handle(nid(i), MNeighbor("", True, [f"a:{i}"]), 0.0)
    out = hv.leave()
    leaves = [o for o in out if isinstance(o, HvSend)]
    assert len(leaves) == 3 and all(isinstance(o.message, MLeave) and not o.message.alive for o in leaves)
    assert not any(c.name.startswith("membership.") for c in registry)


# -- the mesh: join retries, dial queues, per-peer cleanup -------------------------------------------


def mesh(registry: ContainerRegistry, i: int = 0, cfg: NodeConfig | None = None) -> Mesh:
    return Mesh(nid(i), (f"m:{i}",), cfg or NodeConfig(), Random(i), registry)


def test_join_retries_back_off_capped_and_never_stop(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    boot = nid(99)
    effs = m.join([(boot, ("b:99",))], 0.0)
    assert any(isinstance(e, Dial) and e.peer == boot for e in effs)
    times = [0.0]
    now = 0.0
    for _ in range(40):
        effs = m.dial_failed(boot, now)
        d = m.next_deadline()
        assert d is not None and d > now
        while True:
            now = m.next_deadline() or now + 1
            effs = m.handle_timer(now)
            if any(isinstance(e, Dial) and e.peer == boot for e in effs):
                break
        times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    cfg = NodeConfig().membership
    assert min(gaps) >= cfg.join_timeout / 2
    assert max(gaps) <= cfg.join_backoff_max * 1.25 + 5
    assert gaps[-1] > gaps[0]
    assert m.counters["join_attempts"] == 41


def test_bootstrap_by_address_joins_on_connect(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    effs = m.join([(None, ("b:1",))], 0.0)
    assert effs == [DialAddress(("b:1",))]
    effs = m.peer_connected(nid(5), ("b:1",), True, 0.1)
    assert any(isinstance(e, Send) and e.peer == nid(5) for e in effs)


def test_dial_queue_is_capped_and_released_on_failure(registry: ContainerRegistry) -> None:
    cfg = NodeConfig().replace(gossip=NodeConfig().gossip.__class__(dial_queue_capacity=4))
    m = mesh(registry, cfg=cfg)
    m.subscribe("news.>", 0.0)
    peer = nid(7)
    m.peer_connected(peer, ("p:7",), False, 0.0)
    m.handle_message(peer, MNeighbor("news", True, ["p:7"]), 0.0)
    m.peer_disconnected(peer, 0.1)  # still in the swarm view until it fails: sends queue for a dial
    swarm = m.swarms.peek("news")
    assert swarm is not None
    swarm.hv.handle(peer, MNeighbor("news", True, ["p:7"]), 0.2)
    swarm.pt.neighbor_up(peer, 0.2)
    for i in range(20):
        m.publish("news.a", b"%d" % i, 1.0)
        m.flush(1.0)  # one batch per event-loop iteration
    q = m.dial_queues.peek(peer)
    assert q is not None and len(q) == 4
    assert m.counters["dial_queue_dropped"] >= 16
    m.dial_failed(peer, 2.0)
    assert peer not in m.dial_queues and peer not in m.dialing
    swarm = m.swarms.peek("news")
    assert swarm is not None and not swarm.hv.knows(peer)
    assert peer not in m.realm.passive


def test_remove_peer_forgets_and_disconnects(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    peer = nid(3)
    m.add_peer(peer, ("p:3",), 0.0)
    assert peer in m.book and peer in m.realm.passive
    m.peer_connected(peer, ("p:3",), True, 0.0)
    effs = m.remove_peer(peer, 1.0)
    assert any(getattr(e, "reason", "") == "removed" for e in effs)
    assert peer not in m.book and peer not in m.realm.passive and peer not in m.conns


# -- the mesh's parts on their own: the connection table and discovery --------------------------


def _links(registry: ContainerRegistry, needed: set[NodeId], cfg: NodeConfig | None = None) -> Connections:
    cfg = cfg or NodeConfig()
    book = AddressBook(nid(0), cfg.address_book, registry)
    counters = {"dial_queue_dropped": 0, "dials_failed": 0}
    return Connections(cfg, book, registry, counters, needed.__contains__)


def test_connections_queue_dial_and_hand_the_queue_back_on_connect(registry: ContainerRegistry) -> None:
    links = _links(registry, set())
    peer, unknown = nid(1), nid(2)
    links.book.add(peer, ("p:1",), 0.0)
    msg = MLeave("s", False)
    assert links.send(peer, msg, 0.0) == [Dial(peer, ("p:1",))]
    assert links.send(peer, msg, 0.1) == []  # one dial at a time; the message waits
    assert links.send(unknown, msg, 0.1) is None  # no address: the dial failed at once
    assert links.queued("s") == 3
    assert links.connected(peer, ("p:1",), True, 0.2) == [Send(peer, msg), Send(peer, msg)]
    assert peer not in links.dialing and peer not in links.dial_queues
    assert links.send(peer, msg, 0.3) == [Send(peer, msg)]
    links.dial_failed(unknown)
    assert links.counters == {"dial_queue_dropped": 1, "dials_failed": 1}
    assert links.queued("s") == 0


def test_connections_unanswered_dial_times_out_and_full_table_refuses(registry: ContainerRegistry) -> None:
    cfg = NodeConfig().replace(transport=NodeConfig().transport.__class__(max_connections=2))
    links = _links(registry, set(), cfg)
    links.book.add(nid(1), ("p:1",), 0.0)
    links.send(nid(1), MLeave("s", False), 0.0)
    assert links.next_deadline() == DIAL_TIMEOUT
    assert links.expire_dials(DIAL_TIMEOUT) == [nid(1)]
    assert links.connected(nid(2), (), False, 0.0) == []
    assert links.connected(nid(3), (), False, 0.0) == []
    assert links.connected(nid(4), (), False, 0.0) is None  # transport.max_connections
    assert links.connected(nid(2), (), False, 0.0) == []  # idempotent for a connected peer


def test_connections_close_unneeded_connections_after_linger(registry: ContainerRegistry) -> None:
    needed: set[NodeId] = set()
    links = _links(registry, needed)
    a, b = nid(1), nid(2)
    for p in (a, b):
        links.connected(p, (), False, 0.0)
        links.check_linger(p, 0.0)
    assert links.next_deadline() == LINGER
    needed.add(b)  # b became an overlay neighbour meanwhile
    assert links.expire_idle(LINGER) == [Disconnect(a, "idle")]
    assert a not in links.conns and b in links.conns
    links.check_linger(b, 10.0)
    links.in_use(b)
    assert b not in links.linger


def test_discovery_answers_walks_with_hints_and_remembers_the_origin(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    member, origin, relay = nid(1), nid(2), nid(3)
    m.book.add(member, ("p:1",), 0.0)
    # a walk from `member` for swarm "news" passes here: we are no member, so we remember it
    m.handle_message(relay, MFind("news", member.raw, ["p:1"], 0), 0.0)
    assert [p for p, _ in m.discovery.hints.get("news") or ()] == [member]
    # a later walk from `origin` gets `member` as a hint, and `origin` is remembered too
    effs = m.handle_message(relay, MFind("news", origin.raw, ["p:2"], 0), 1.0)
    found = [e.message for e in effs if isinstance(e, Send) and isinstance(e.message, MFound)]
    dials = [e for e in effs if isinstance(e, Dial)]
    assert dials == [Dial(origin, ("p:2",))]  # not connected: the MFound waits for the dial
    assert not found and m.links.queued("news") == 1
    # joining the swarm takes the hints as a head start and starts walks
    m.subscribe("news.>", 2.0)
    hv = m.swarms.peek("news").hv  # type: ignore[union-attr]
    assert {member, origin} <= set(hv.passive) and "news" not in m.discovery.hints


def test_found_members_are_joined_only_by_an_empty_view_and_else_asked_for_a_link(
        registry: ContainerRegistry) -> None:
    # #14: a JOIN forces its contact and the ends of its walks to take the joiner in, each evicting
    # a neighbour; sent by a member that had only lost one, it set off a cascade of evictions
    m = mesh(registry)
    m.subscribe("news.>", 0.0)
    hv = m.swarms.peek("news").hv  # type: ignore[union-attr]

    def found(i: int, now: float) -> list[object]:
        m.peer_connected(nid(i), (f"p:{i}",), True, now)
        effs = m.handle_message(nid(9), MFound("news", [PeerInfo(nid(i).raw, [f"p:{i}"])]), now)
        return [e.message for e in effs if isinstance(e, Send) and e.peer == nid(i)]

    assert [type(x) for x in found(1, 1.0)] == [MJoin]  # an empty view joins
    m.handle_message(nid(2), MNeighbor("news", True, ["p:2"]), 1.1)
    assert list(hv.active) == [nid(2)]
    assert found(3, 1.2) == [MNeighbor("news", False, ["m:0"])]  # one neighbour: asks for a link
    assert hv.counters["joins"] == 1 and hv.pending.get(nid(3)) is False


def test_discovery_address_dial_is_answered_once(registry: ContainerRegistry) -> None:
    m = mesh(registry)
    assert m.join([(None, ("b:1", "b:2"))], 0.0) == [DialAddress(("b:1", "b:2"))]
    assert m.discovery.address_answered(("b:2",)) is True
    assert m.discovery.address_answered(("b:2",)) is False
    assert m.join([(None, ("b:3",))], 1.0) == [DialAddress(("b:3",))]
    m.address_dial_failed(("b:3",), 2.0)
    assert len(m.discovery.addr_dials) == 0
