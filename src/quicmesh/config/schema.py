"""The configuration schema: one frozen dataclass per subsystem, nested in :class:`NodeConfig`,
and :func:`validate`, the rules a configuration must follow.

Every limit that bounds memory lives here, with its unit, its default and the reason for that
default (citing the paper or peer system it comes from). Reading TOML and the environment is
:mod:`.loader`'s job; converting and checking raw values is :mod:`.values`'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .addresses import AddressesConfig
from .discovery import DiscoveryConfig
from .failure import FailureConfig
from .http_api import HttpApiConfig
from .punch import PunchConfig
from .relay import RelayConfig
from .store import StoreConfig
from .transport import TransportConfig
from .values import KiB, MiB, check_type, coerce, field_types

__all__ = [
    "SECTIONS",
    "AddressBookConfig",
    "AddressesConfig",
    "DiscoveryConfig",
    "FailureConfig",
    "GatewayConfig",
    "GossipConfig",
    "HttpApiConfig",
    "KiB",
    "MembershipConfig",
    "MiB",
    "NodeConfig",
    "ObservabilityConfig",
    "PubSubConfig",
    "PunchConfig",
    "RegistryConfig",
    "RpcConfig",
    "StoreConfig",
    "TransportConfig",
    "build_section",
    "validate",
]

MAX_BATCH_MESSAGES = 1024
"""Messages one gossip batch may carry on the wire; a receiver drops a larger batch (counted)."""


@dataclass(frozen=True, slots=True)
class PubSubConfig:
    """Subscriptions and topic messages."""

    subscriber_queue_size: int = 1024
    """Messages buffered per subscription (count) before the overflow policy applies. 1,024 as
    memberlist's handoff queue: ~1 s of a busy topic, so a briefly slow reader loses nothing."""
    subscriber_overflow: str = "drop_oldest"
    """``drop_oldest`` (a slow reader loses old messages, never stalls the node),
    ``drop_newest``, or ``block`` (a full queue holds the node's delivery, back to the publishers,
    for up to ``subscriber_block_timeout``; then drops the oldest)."""
    max_message_size: int = 1 * MiB - 4 * KiB
    """Largest payload (bytes) accepted by ``publish`` and on receive; 1 MiB as NATS, less the
    frame header room."""
    max_subscriptions: int = 10_000
    """Local subscriptions open at once (count); each holds a queue of up to
    ``subscriber_queue_size`` messages. NATS, likewise, limits subscriptions with an error."""
    # #15 (groups)
    group_window: int = 256
    """Work-queue groups: messages one member node may hold not yet taken by its application
    (count); more go to another member or wait. Spreads work by consumption speed."""
    group_ack_timeout: float = 5.0
    """Seconds a member node with messages in flight may go without taking any before they are
    redelivered to other members (and the member is left out for ``group_suspect_ttl``)."""
    group_suspect_ttl: float = 30.0
    """Seconds a member that timed out or lost its connection stays out of the choices (until it
    reconnects); ``transport.idle_timeout``, so a dead member's connection is gone by then."""
    group_max_unacked: int = 16_384
    """Group messages a publishing node holds until a member took them (count); publishing
    past it raises ``Overloaded``."""
    group_hold_timeout: float = 30.0
    """Seconds a group message may wait for a member (none live, or all full) before it is
    dropped and counted (``groups.expired``)."""
    group_max_inbound: int = 8_192
    """Group messages from other nodes handed to local members and not yet taken (count);
    more are refused back to their publisher (redelivered elsewhere)."""
    group_dedup_ttl: float = 120.0
    """Seconds a taken (publisher, id) is remembered so a redelivery is not taken twice."""
    group_dedup_size: int = 65_536
    """(publisher, id) pairs remembered for deduplication (count)."""
    # #14 (fastpath)
    subscriber_block_timeout: float = 5.0
    """With ``subscriber_overflow = "block"``: seconds a full subscription queue may hold the
    node's delivery (and so, through flow control, the publishers) before its oldest messages are
    dropped after all, counted in ``sub.dropped`` (default 5 s: a slow reader loses nothing, a
    dead one cannot stall the node for longer)."""


@dataclass(frozen=True, slots=True)
class RpcConfig:
    """Remote procedure calls."""

    max_pending_calls: int = 10_000
    """Outgoing calls awaiting a reply (count); ``Overloaded`` beyond. At ~40,000 req/s (qh3,
    64 in flight, measured here) a steady state holds a few hundred; 10,000 absorbs bursts and
    still bounds the table."""
    max_concurrent_handlers: int = 256
    """Incoming calls running at once (count); the caller gets ``Overloaded`` beyond. 256 as
    ``max_incoming_handshakes``: enough to keep 64-in-flight callers from several peers busy."""
    default_timeout: float = 5.0
    """Seconds a call waits by default, over all attempts (a p50 round trip is ~0.2 ms here, so
    5 s only expires on a dead or overloaded callee)."""
    max_attempts: int = 3
    """Providers tried per call before giving up (count)."""
    max_services: int = 1_000
    """Procedures this node may advertise (count); the advertisement frame stays well under
    ``max_frame_size`` at 1,000 names."""
    provider_policy: str = "random"
    """``random``, ``round_robin`` or ``lowest_rtt``."""


@dataclass(frozen=True, slots=True)
class AddressBookConfig:
    """Known peers and their addresses."""

    ttl: float = 3600.0
    """Seconds a peer is kept without being seen (1 h). The Rust mesh's address book never
    forgot a peer; an hour outlives restarts and short partitions, not decommissioned hosts."""
    capacity: int = 10_000
    """Peers remembered (count); stale, unconnected peers are evicted first. 10,000 as the
    gateway's client limit: a few MiB of addresses."""


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """HyParView (Leitão et al., 2007), with iroh-gossip's defaults."""

    active_view: int = 5
    """Active view size (paper: log10(N)+1; iroh-gossip: 5)."""
    passive_view: int = 30
    """Passive view size (iroh-gossip: 30)."""
    active_random_walk: int = 6
    """ARWL: hops a FORWARDJOIN travels (paper, iroh-gossip: 6)."""
    passive_random_walk: int = 3
    """PRWL: hop at which a FORWARDJOIN also lands in the passive view (3)."""
    shuffle_random_walk: int = 6
    """Hops a SHUFFLE travels (iroh-gossip: 6)."""
    shuffle_interval: float = 60.0
    """Seconds between shuffles (iroh-gossip: 60)."""
    shuffle_active: int = 3
    """Active peers sent in a shuffle (iroh-gossip: 3)."""
    shuffle_passive: int = 4
    """Passive peers sent in a shuffle (iroh-gossip: 4)."""
    neighbor_request_timeout: float = 0.5
    """Seconds to wait for a NEIGHBOR reply (iroh-gossip: 500 ms)."""
    lost_ttl: float = 600.0
    """Seconds a neighbour whose connection was lost (not closed in an orderly way) is remembered
    and re-dialled with priority; it rejoins the two halves after a partition heals."""
    join_timeout: float = 5.0
    """Seconds to wait for a join to be answered before retrying (the Rust mesh's joins had no
    timeout; 10x the neighbour request timeout, since a join travels ``active_random_walk`` hops)."""
    join_backoff_max: float = 60.0
    """Cap (seconds) of the exponential backoff between join retries: one shuffle interval."""
    hint_ttl: float = 300.0
    """Seconds a swarm member hint (a node that walked by asking for a swarm's members) is kept
    by nodes outside the swarm, to answer later walks (default 300)."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Plumtree broadcast (Leitão et al., 2007), with iroh-gossip's defaults."""

    graft_timeout_1: float = 0.080
    """Seconds after the first IHAVE before sending GRAFT (iroh-gossip: 80 ms)."""
    graft_timeout_2: float = 0.040
    """Seconds before asking the next IHAVE sender (iroh-gossip: 40 ms)."""
    ihave_batch_interval: float = 0.005
    """Seconds IHAVEs are batched (iroh-gossip: 5 ms)."""
    optimization_threshold: int = 7
    """Hop difference that triggers tree optimisation (iroh-gossip: 7)."""
    seen_ttl: float = 90.0
    """Seconds a received message id is remembered (iroh-gossip: 90 s)."""
    seen_capacity: int = 100_000
    """Message ids remembered (count). With ``seen_ttl`` 90 s this holds ~1,100 messages/s
    before ids are evicted before their TTL. Each id costs ~300 B of memory (the id, its deadline,
    its place in the expiry heap and in the index by swarm; measured with tracemalloc): ~30 MB
    at the default when full."""
    payload_cache_ttl: float = 30.0
    """Seconds a payload is kept to answer GRAFTs (iroh-gossip: 30 s)."""
    payload_cache_capacity: int = 16_384
    """Payloads kept for GRAFTs (count). A GRAFT arrives ``graft_timeout_1`` (80 ms) or more after
    the IHAVE, so the cache must outlast a burst's in-flight window: 16,384 covers 1.6 s at
    10,000 msg/s (measured: 4,096 made bursts of 10k messages lose GRAFT answers). Memory is
    bounded by ``payload_cache_bytes`` as well."""
    payload_cache_bytes: int = 64 * MiB
    """Payload bytes kept for GRAFTs: 64 max-size messages, as NATS' 64 MiB slow-consumer cap."""
    batch_max_messages: int = 256
    """Messages one publisher sends to one topic in one event-loop iteration that travel as one
    gossip batch (count, at most ``MAX_BATCH_MESSAGES`` = 1,024): one id, one seen-cache entry, one
    payload-cache entry, one ordering slot, one frame and one delivery to each subscription queue
    for all of them, so per-message protocol cost falls about N-fold under load. A lone publish
    still leaves at once (the batch is flushed at the end of the loop iteration), so batching adds
    no latency. Measured with two processes at 64 B (bench/two_nodes.py): 64 gave ~450k msg/s,
    256 ~630k; the batch a GRAFT repairs stays small (256 x 64 B = 16 KiB; ``batch_max_bytes``
    caps larger messages). Below a subscription queue (``subscriber_queue_size`` 1,024)."""
    batch_max_bytes: int = 64 * KiB
    """Payload bytes of one gossip batch; a larger message travels alone."""
    dial_queue_capacity: int = 256
    """Messages waiting per peer for a dial (count); oldest dropped and counted (iroh-gossip's
    queue was unbounded and a failed dial only logged)."""
    reorder_window: int = 16_384
    """Messages held per publisher to restore publish order (count). While the broadcast tree
    repairs, a burst reaches a subscriber over two paths at once and GRAFT-repaired messages
    arrive late (measured on a 10k-message burst over three processes: a window of 64 lost 11 %
    as late, 4,096 lost 2.6 % in one run of two). The memory bound is ``reorder_buffer_total``,
    shared by all publishers."""
    publisher_idle_ttl: float = 600.0
    """Seconds a publisher's ordering state (its next expected seq) is kept after its last
    message; without it churned publishers would pile up to ``max_publishers``. A publisher that
    returns after that starts afresh: its first message opens a gap (``reorder_gap_timeout``)."""
    reorder_buffer_total: int = 65_536
    """Messages held for reordering over all publishers together (count): the memory bound of
    ordering, whatever the number of publishers."""
    max_topics: int = 10_000
    """Topic swarms joined at once (count); each holds its own views and caches. A swarm this
    node only publishes to (or published to within 300 s of its last unsubscribe) gives way to a
    new one at the cap, the one published to longest ago first."""
    max_publishers: int = 10_000
    """(swarm, publisher) ordering states kept (count); the least recently used is forgotten and
    that publisher's next message starts a fresh order."""
    reorder_gap_timeout: float = 10.0
    """Seconds a missing sequence number of one publisher is waited for at most before it is
    skipped (counted); past ``reorder_gap_hold`` only while the swarm's tree repairs announced
    messages (#14: a gap nobody could fill cost all 10 s after every partition's heal). Repair
    (GRAFT retries backing off from 40 ms to 1 s) can take seconds on a loaded host."""
    reorder_gap_hold: float = 3.0
    """Seconds a missing seq is waited for in any case (20 % loss, simulator: 25k gaps filled in 2 s)."""
    # #14 (tree)
    tree_refresh: float = 30.0
    """#14: seconds (x 0.5-1.5, a factor fixed per node and publisher) between two refreshes of
    a publisher's tree at a node: the node grafts its neighbours lazy for that publisher, which
    push its next batch too, and the first arrival picks the eager link by the latencies of now
    (a path that sped up, an eager link that slowed down); ~4 extra payloads per publisher per
    node per refresh; 0: off."""
    tree_publishers: int = 256
    """Publishers per swarm with their own broadcast tree (count, default 256; LRU: a forgotten one floods once)."""
    reorder_start_wait: float = 1.0
    """Seconds a publisher's first message seen mid-stream waits for earlier ones in any case;
    then, like a gap, up to ``reorder_gap_timeout`` while the swarm's tree repairs (re-checked
    every 0.25 s), but only when this node has been in the swarm that long already."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Service advertisements."""

    lease_ttl: float = 300.0
    """Seconds an advertisement lives without refresh (the Erlang mesh's 300 s)."""
    sweep_interval: float = 10.0
    """Seconds between sweeps of expired advertisements. The Erlang mesh swept every 60 s, so an
    expired service stayed visible up to a minute; 10 s bounds that staleness."""
    max_entries: int = 10_000
    """Advertisements kept in total (count), matching ``gateway.max_clients``."""
    max_per_provider: int = 100
    """Advertisements kept per provider (count), so one provider cannot fill the registry."""
    max_lease: float = 3600.0
    """Longest lease (seconds) a received advertisement may ask for; longer ones are clamped, so
    a provider that dies with a huge ttl still vanishes within an hour."""
    max_metadata_bytes: int = 1024
    """Metadata of one advertisement (bytes); larger ones are refused on advertise and dropped
    (counted) on receipt. Keeps one advert, and so one lookup answer entry, small."""
    suspect_ttl: float = 30.0
    """Seconds a provider stays out of this node's choices after a connection loss, a failed
    dial or an unanswered attempt (local only; its lease is untouched). Three sweeps."""
    lookup_timeout: float = 2.0
    """Seconds a lookup (query to neighbours for a name with no local entry) waits for answers;
    the dial timeout of the simulator and a few WAN round trips."""
    lookup_fanout: int = 5
    """Neighbours asked per lookup (count): the whole HyParView active view (5). A node that just
    joined has mostly just-joined neighbours with empty registries; asking only 3 of them made
    39 % of fresh nodes' first calls fail with NoProvider in the soak."""
    max_lookups: int = 1024
    """Names being looked up at once (count); identical lookups share one entry."""
    max_lookup_waiters: int = 10_000
    """Callers waiting on lookups at once (count), as ``rpc.max_pending_calls``."""
    max_answer_entries: int = 16
    """Advertisements sent (and accepted) in one lookup answer (count): with 1 KiB of metadata an
    answer stays under ~20 KiB."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Light clients."""

    max_clients: int = 10_000
    """Clients connected at once (count), enforced before any per-client state exists. 10,000 as
    the Erlang mesh's limit (which nothing there called)."""
    max_client_subscriptions: int = 1_000
    """Subscriptions per client (count)."""
    max_client_advertisements: int = 100
    """Advertisements per client (count)."""
    max_client_pending_calls: int = 1_000
    """Calls in flight per client (count)."""
    max_pending_bytes: int = 8 * MiB
    """Unsent bytes per client before it is closed as a slow consumer. NATS allows 64 MiB per
    connection; with 10,000 clients we take 8 MiB so the sum stays within what a host can hold."""
    write_stall_timeout: float = 10.0
    """Seconds a client's writes may stall before it is closed (NATS: 10 s)."""
    # #11 (dial)
    max_client_call_timeout: float = 30.0
    """Longest call timeout (seconds) a client may ask for; a longer one is clamped, so a call
    cannot pin its payload at the gateway for longer."""
    max_client_pending_bytes: int = 4 * MiB
    """Payload bytes of one client's calls in flight (requests and replies held, count of bytes);
    a call that would exceed it fails at once with ``LimitExceeded``. Released when a call ends."""
    max_client_topics: int = 256
    """Topics (swarms) one client subscribes or publishes to at once (count); the node joins a
    swarm per topic, so this caps what one client makes the node hold."""
    max_clients_subscriptions: int = 4_096
    """Subscriptions of all clients together (count), held on top of the node's own
    ``pubsub.max_subscriptions``: clients never use up the node's own."""
    max_clients_topics: int = 1_024
    """Topics (swarms) of all clients together (count), on top of the node's own
    ``gossip.max_topics``."""
    max_clients_advertisements: int = 32
    """Names all clients together advertise through this node (count). They are advertised under
    the node's id, so they share ``registry.max_per_provider`` with the node's own adverts; this
    total must stay below it, and the rest is the node's own."""


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """Metrics, health and the leak sentinel."""

    sentinel_interval: float = 5.0
    """Seconds between sentinel samples (RSS, open fds, container stats)."""
    malloc_trim_interval: float = 30.0
    """Seconds between two ``malloc_trim(0)`` calls (glibc; 0 turns them off). The C allocator
    keeps freed pages after bursts and connection churn; trimming returns them, so RSS follows
    the live heap instead of its high-water mark. One call takes a few milliseconds (8 ms right
after freeing 50 MB here), once per interval.
    Most effective with the system allocator for Python objects too (``quicmesh node`` runs with
    ``PYTHONMALLOC=malloc`` unless told otherwise; see the README's "Soak" section)."""
    sentinel_window: int = 120
    """Samples kept (count): 10 minutes at the default interval."""
    rss_slope_limit: float = 64 * KiB
    """Bytes per minute of steady RSS growth over the window that marks the node degraded."""
    near_capacity: float = 0.95
    """Fill ratio (0 to 1] at which a container counts as near capacity."""
    near_capacity_for: float = 300.0
    """Seconds a container may stay near capacity (or keep evicting) before degraded."""
    sentinel_min_samples: int = 24
    """Samples (count) needed before RSS growth is judged: 2 minutes at the default interval, so
    a fresh node's allocator warm-up is not called a leak. At least 8 are always required."""
    sentinel_traffic_tolerance: float = 0.25
    """Relative rise of traffic over the window (0.25 = +25 %) beyond which rising RSS is
    explained by rising load rather than called a leak."""
    sentinel_ignore: tuple[str, ...] = ()
    """Container names expected to stay full (ring buffers); never reported as near capacity or
    evicting. The sentinel's own history is always ignored."""
    http_max_connections: int = 16
    """HTTP connections served at once on the /metrics and /health endpoint (count); more get
    503 and are closed."""
    http_max_request_bytes: int = 8 * KiB
    """Largest HTTP request head (request line plus headers, bytes); larger gets 431."""
    http_read_timeout: float = 5.0
    """Seconds a client has to send its request head before the connection is dropped."""
    http_allow_remote: bool = False
    """Allow the HTTP endpoint to bind a non-loopback address (it has no authentication)."""


GC_YOUNG_THRESHOLD = 50_000
"""The default of ``gc_young_threshold`` (#14)."""

MAX_BUSY_POLL_US = 10_000
"""Largest ``busy_poll_us`` (10 ms: beyond that a reply is rarely what wakes a node)."""


def check_busy_poll_us(value: int) -> int:
    """A node's or light client's ``busy_poll_us``: returned when 0 (off) to
    :data:`MAX_BUSY_POLL_US`; else :class:`~quicmesh.errors.ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BUSY_POLL_US:
        raise ConfigError("busy_poll_us", f"must be 0 (off) to {MAX_BUSY_POLL_US:,} microseconds")
    return value


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs. Only ``realm`` usually needs setting."""

    listen: str = "127.0.0.1:0"
    """``HOST:PORT`` to listen on (UDP); port 0 picks a free one."""
    realm: str = "default"
    """Mesh name; nodes of different realms refuse each other at the handshake."""
    bootstrap: tuple[str, ...] = ()
    """``HOST:PORT`` addresses of nodes to join through."""
    key_path: str | None = None
    """Ed25519 key file; ``None``: ``data_dir/node.key`` or a fresh in-memory key."""
    data_dir: str | None = None
    """Directory for the key and the SQLite store; ``None``: in memory."""
    http: str | None = None
    """``HOST:PORT`` for /metrics and /health; ``None``: off."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    pubsub: PubSubConfig = field(default_factory=PubSubConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    address_book: AddressBookConfig = field(default_factory=AddressBookConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    # #11 (admit)
    realm_file: str | None = None
    """Public realm file (``quicmesh realm init``): authority mode. ``None`` (and no ``cert``):
    an open realm named ``realm``, where anyone who knows the name may join (development)."""
    cert: str | None = None
    """This node's member certificate file (``quicmesh realm admit``); required in authority
    mode; re-read when it changes (renewal without restart). Default ``None``."""
    revocations: str | None = None
    """The revocation list file this node loads at start and keeps up to date; ``None``:
    ``data_dir/revocations.pem``, or memory only without a ``data_dir``."""
    trust_poll_interval: float = 2.0
    """Seconds between two checks of the certificate and revocation files for changes (default 2)."""
    # #11 (logperm)
    offence_limit: int = 3
    """Offences (invalid claims relayed: a forged or unpermitted gossip batch, log operation or
    advert in a lookup answer) a peer may commit within ``offence_window`` before it is
    disconnected and blocked (default 3, as ``transport.max_peer_offences`` for messages whose
    handling raised)."""
    offence_window: float = 60.0
    """Seconds an offence counts, from a peer's first offence in the window (default 60)."""
    block_seconds: float = 300.0
    """Seconds a peer blocked for its offences has its connections refused (default 300)."""
    # #15 (httpface)
    http_api: HttpApiConfig = field(default_factory=HttpApiConfig)
    """The HTTP face (``--http-api``; env ``QUICMESH_HTTP_API__LISTEN``); off by default."""
    # #13 (localdisc)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    """Local discovery (mDNS) of nodes of this realm; on by default (``--no-local-discovery``)."""
    # #13 (observed)
    addresses: AddressesConfig = field(default_factory=AddressesConfig)
    """What the node announces as its addresses (``--advertise-address``; observed addresses)."""
    # #13 (relay)
    relay: RelayConfig = field(default_factory=RelayConfig)
    """Relaying for others (``--relay``) and reachability through relays (``--relay-via``)."""
    # #13 (punch)
    punch: PunchConfig = field(default_factory=PunchConfig)
    """Hole punching: direct paths between nodes behind NATs through a common node (on by
    default; ``QUICMESH_PUNCH__ENABLED=false``)."""
    # #14 (fastpath)
    event_loop: str = "asyncio"
    """The event loop ``quicmesh node`` runs on: ``asyncio`` (default) or ``uvloop`` (the
    ``quicmesh[uvloop]`` extra; ``--loop``)."""
    gc_young_threshold: int = GC_YOUNG_THRESHOLD
    """Allocations between two collections of Python's youngest garbage-collector generation in
    ``quicmesh node`` (with the older generations' thresholds 50 and 100); 0 keeps Python's own
    (700, 10, 10). A node's messages make short-lived objects that reference counting frees, so
    most young collections find nothing; fewer of them cut the ping-pong RTT's p99 by 10-20 %
    (``bench/gc_rtt.py``), its p50 unchanged. An application that embeds
    :class:`~quicmesh.Node` keeps its own settings (see :func:`quicmesh.cli.node.tune_gc`)."""
    busy_poll_us: int = 0
    """Microseconds the node's event loop keeps polling instead of sleeping after each transmit
    (#14; 0, the default, is off; at most 10,000; ``--busy-poll-us``): the reply it awaits is
    read when it lands, not after a wake-up (a call between two node processes on one host:
    ~290 -> ~120 µs at the median on the project's VM, ``bench/busy_poll.py``). It costs up to that much CPU after each
    transmit, a whole core while traffic is closer together; see
    :mod:`quicmesh.runtime.busy_poll`."""

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, str):
            object.__setattr__(self, "bootstrap", (self.bootstrap,))
        elif not isinstance(self.bootstrap, tuple):
            try:
                object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
            except TypeError:
                raise ConfigError("bootstrap", f"expected a list of HOST:PORT, got {self.bootstrap!r}") from None
        for name in SECTIONS:
            value = getattr(self, name)
            if isinstance(value, Mapping):  # NodeConfig(transport={"max_connections": 50})
                object.__setattr__(self, name, build_section(name, value))
        validate(self)

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


SECTIONS = {f.name: f for f in dataclasses.fields(NodeConfig) if dataclasses.is_dataclass(f.default_factory)}
"""The fields of :class:`NodeConfig` that are sections (one dataclass each), by name."""


_ZERO_MEANS_UNLIMITED = frozenset({
    "store.max_log_length", "observability.malloc_trim_interval", "transport.retry_threshold",
    "failure.probe_interval", "transport.ack_delay", "transport.flush_bytes", "gossip.tree_refresh",
})
"""Keys that may be 0: no cap, or (``malloc_trim_interval``, ``ack_delay``, ``flush_bytes``,
``tree_refresh``) off."""


def validate(cfg: NodeConfig) -> None:
    """Check types, ranges and relations; raises :class:`ConfigError` naming the bad key.

    Every number in a section must be positive (keys in ``_ZERO_MEANS_UNLIMITED`` may be 0).
    """
    _check_types(cfg)
    if not cfg.realm or len(cfg.realm) > 64:
        raise ConfigError("realm", "must be 1 to 64 characters")
    _check_hostport("listen", cfg.listen)
    for key in ("realm_file", "cert", "revocations"):
        if getattr(cfg, key) == "":
            raise ConfigError(key, "must be a file path (or unset)")
    for key in ("trust_poll_interval", "offence_limit", "offence_window", "block_seconds"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(key, f"must be positive, got {getattr(cfg, key)!r}")
    for i, b in enumerate(cfg.bootstrap):
        _check_hostport(f"bootstrap[{i}]", b.rpartition("@")[2].partition("/")[0] if b.startswith("relay:") else b)
    if cfg.http is not None:
        _check_hostport("http", cfg.http)
    if cfg.http_api.listen is not None:  # #15 (httpface)
        _check_hostport("http_api.listen", cfg.http_api.listen)
    for name in SECTIONS:
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float) and value <= 0:
                if value == 0 and f"{name}.{f.name}" in _ZERO_MEANS_UNLIMITED:
                    continue
                raise ConfigError(f"{name}.{f.name}", f"must be positive, got {value!r}")
    if cfg.pubsub.subscriber_overflow not in ("drop_oldest", "drop_newest", "block"):  # #14: block
        raise ConfigError("pubsub.subscriber_overflow", "must be 'drop_oldest', 'drop_newest' or 'block'")
    if cfg.event_loop not in ("asyncio", "uvloop"):  # #14 (fastpath)
        raise ConfigError("event_loop", "must be 'asyncio' or 'uvloop'")
    if isinstance(cfg.gc_young_threshold, bool) or not 0 <= cfg.gc_young_threshold <= 10_000_000:
        raise ConfigError("gc_young_threshold", "must be 0 (Python's own) to 10,000,000")
    check_busy_poll_us(cfg.busy_poll_us)  # #14
    if cfg.rpc.provider_policy not in ("random", "round_robin", "lowest_rtt"):
        raise ConfigError("rpc.provider_policy", "must be 'random', 'round_robin' or 'lowest_rtt'")
    if cfg.pubsub.max_message_size > cfg.transport.max_frame_size - 256:
        raise ConfigError("pubsub.max_message_size", "must be at least 256 bytes below transport.max_frame_size")
    if cfg.transport.keepalive_interval >= cfg.transport.idle_timeout:
        raise ConfigError("transport.keepalive_interval", "must be shorter than transport.idle_timeout")
    if not 0 <= cfg.transport.ack_delay <= 0.01:  # #14: under the peer's assumed 25 ms
        raise ConfigError("transport.ack_delay", "must be 0 (at once) to 0.01 seconds")
    if not 1200 <= cfg.transport.max_datagram_size <= 65527:
        raise ConfigError("transport.max_datagram_size", "must be 1200 (QUIC's smallest) to 65527 bytes")
    if not 16 <= cfg.transport.max_frame_size <= 0xFFFFFFFF:
        raise ConfigError("transport.max_frame_size", "must be 16 to 4294967295 (a 32-bit length prefix)")
    if cfg.observability.near_capacity > 1:
        raise ConfigError("observability.near_capacity", "is a fill ratio: at most 1.0")
    if cfg.gossip.batch_max_messages > MAX_BATCH_MESSAGES:
        raise ConfigError("gossip.batch_max_messages", f"must be at most {MAX_BATCH_MESSAGES} (what receivers accept)")
    if cfg.membership.passive_random_walk > cfg.membership.active_random_walk:
        raise ConfigError("membership.passive_random_walk", "must not exceed membership.active_random_walk")
    if cfg.gateway.max_clients_advertisements >= cfg.registry.max_per_provider:
        raise ConfigError("gateway.max_clients_advertisements", "must be below registry.max_per_provider")


def _check_types(cfg: NodeConfig) -> None:
    """Every field holds a value of its declared type (configs built in code skip coercion)."""
    hints = field_types(NodeConfig)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SECTIONS:
            cls = SECTIONS[f.name].default_factory
            if not isinstance(value, cls):  # type: ignore[arg-type]
                raise ConfigError(f.name, f"expected a {getattr(cls, '__name__', cls)}, got {value!r}")
            shints = field_types(type(value))
            for sf in dataclasses.fields(value):
                check_type(f"{f.name}.{sf.name}", shints[sf.name], getattr(value, sf.name))
        else:
            check_type(f.name, hints[f.name], value)


def _check_hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")


def build_section(name: str, value: Any) -> Any:
    """Build section ``name`` from a mapping of raw values (TOML, environment, overrides)."""
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be a table")
    cls = SECTIONS[name].default_factory
    assert isinstance(cls, type)
    shints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for k, v in value.items():
        if k not in shints:
            raise ConfigError(f"{name}.{k}", "unknown setting")
        kwargs[k] = coerce(f"{name}.{k}", shints[k], v)
    return cls(**kwargs)
