"""Node configuration: one frozen dataclass per subsystem, nested in :class:`NodeConfig`.

Every limit that bounds memory lives here, with its unit, its default and the reason for that
default (citing the paper or peer system it comes from). Load from a TOML file and ``QUICMESH_*``
environment variables with :func:`load_config`; the environment overrides the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

__all__ = [
    "AddressBookConfig",
    "GatewayConfig",
    "GossipConfig",
    "MembershipConfig",
    "NodeConfig",
    "ObservabilityConfig",
    "PubSubConfig",
    "RegistryConfig",
    "RpcConfig",
    "StoreConfig",
    "TransportConfig",
    "load_config",
]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """QUIC connections, admission and framing."""

    max_connections: int = 1000
    """Connections held at once (count). Beyond it new connections are refused with reason
    ``max_connections``. 1,000 as the Erlang mesh's pool, well under quinn's 65,536: ~42 KiB RSS
    each with qh3 here, so ~42 MiB at the cap."""
    max_incoming_handshakes: int = 256
    """Handshakes in progress at once (count). A half-open connection otherwise lives until its
    idle timeout (aioquic has no cap); 256 absorbs a reconnect storm of a few hundred peers."""
    handshake_timeout: float = 10.0
    """Seconds for TLS plus the quicmesh hello/proof exchange before the attempt is dropped."""
    idle_timeout: float = 30.0
    """Seconds without any packet before QUIC closes the connection (quinn's default)."""
    keepalive_interval: float = 5.0
    """Seconds between pings on an idle connection; well under ``idle_timeout``."""
    max_frame_size: int = 1 * MiB
    """Largest frame accepted (bytes), checked from the length prefix before buffering."""
    send_buffer_bytes: int = 8 * MiB
    """Unsent bytes queued per connection (bytes). QUIC stream writers never pause, so the node
    keeps its own window; past it, best-effort frames are dropped and counted."""
    alpn: str = "quicmesh/1"
    """TLS ALPN protocol id; a peer speaking another protocol fails the handshake."""


@dataclass(frozen=True, slots=True)
class PubSubConfig:
    """Subscriptions and topic messages."""

    subscriber_queue_size: int = 1024
    """Messages buffered per subscription (count) before the overflow policy applies."""
    subscriber_overflow: str = "drop_oldest"
    """``drop_oldest`` (a slow reader loses old messages, never stalls the node) or
    ``drop_newest``."""
    max_message_size: int = 1 * MiB - 4 * KiB
    """Largest payload (bytes) accepted by ``publish`` and on receive; 1 MiB as NATS, less the
    frame header room."""
    max_subscriptions: int = 10_000
    """Local subscriptions open at once (count)."""
    max_peer_patterns: int = 1_000
    """Topic patterns remembered per peer (count); more are ignored and counted."""


@dataclass(frozen=True, slots=True)
class RpcConfig:
    """Remote procedure calls."""

    max_pending_calls: int = 10_000
    """Outgoing calls awaiting a reply (count); ``Overloaded`` beyond."""
    max_concurrent_handlers: int = 256
    """Incoming calls running at once (count); the caller gets ``Overloaded`` beyond."""
    default_timeout: float = 5.0
    """Seconds a call waits by default, over all attempts."""
    max_attempts: int = 3
    """Providers tried per call before giving up (count)."""
    max_services: int = 1_000
    """Procedures this node may advertise (count)."""
    provider_policy: str = "random"
    """``random``, ``round_robin`` or ``lowest_rtt``."""


@dataclass(frozen=True, slots=True)
class AddressBookConfig:
    """Known peers and their addresses."""

    ttl: float = 3600.0
    """Seconds a peer is kept without being seen (1 h)."""
    capacity: int = 10_000
    """Peers remembered (count); stale, unconnected peers are evicted first."""


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
    join_timeout: float = 5.0
    """Seconds to wait for a join to be answered before retrying."""
    join_backoff_max: float = 60.0
    """Cap (seconds) of the exponential backoff between join retries."""


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
    """Message ids remembered (count)."""
    payload_cache_ttl: float = 30.0
    """Seconds a payload is kept to answer GRAFTs (iroh-gossip: 30 s)."""
    payload_cache_capacity: int = 4_096
    """Payloads kept for GRAFTs (count)."""
    payload_cache_bytes: int = 64 * MiB
    """Payload bytes kept for GRAFTs."""
    dial_queue_capacity: int = 256
    """Messages waiting per peer for a dial (count); oldest dropped and counted."""
    reorder_window: int = 64
    """Messages held per publisher to restore publish order (count)."""
    max_topics: int = 10_000
    """Topics joined at once (count)."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Service advertisements."""

    lease_ttl: float = 300.0
    """Seconds an advertisement lives without refresh (the Erlang mesh's 300 s)."""
    sweep_interval: float = 10.0
    """Seconds between sweeps of expired advertisements."""
    max_entries: int = 10_000
    """Advertisements kept in total (count)."""
    max_per_provider: int = 100
    """Advertisements kept per provider (count)."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Light clients."""

    max_clients: int = 10_000
    """Clients connected at once (count), enforced before any per-client state exists."""
    max_client_subscriptions: int = 1_000
    """Subscriptions per client (count)."""
    max_client_advertisements: int = 100
    """Advertisements per client (count)."""
    max_client_pending_calls: int = 1_000
    """Calls in flight per client (count)."""
    max_pending_bytes: int = 8 * MiB
    """Unsent bytes per client before it is closed as a slow consumer."""
    write_stall_timeout: float = 10.0
    """Seconds a client's writes may stall before it is closed (NATS: 10 s)."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Replicated log stores."""

    max_operations: int = 1_000_000
    """Operations stored (count)."""
    max_bytes: int = 256 * MiB
    """Payload bytes stored."""
    max_logs: int = 10_000
    """Logs stored (count)."""
    max_operation_size: int = 256 * KiB
    """Largest operation payload (bytes)."""


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """Metrics, health and the leak sentinel."""

    sentinel_interval: float = 5.0
    """Seconds between sentinel samples."""
    sentinel_window: int = 120
    """Samples kept (count): 10 minutes at the default interval."""
    rss_slope_limit: float = 64 * KiB
    """Bytes per minute of steady RSS growth over the window that marks the node degraded."""
    near_capacity: float = 0.95
    """Fill ratio at which a container counts as near capacity."""
    near_capacity_for: float = 300.0
    """Seconds a container may stay near capacity (or keep evicting) before degraded."""


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
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, str):
            object.__setattr__(self, "bootstrap", (self.bootstrap,))
        elif not isinstance(self.bootstrap, tuple):
            object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        validate(self)

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


_SECTIONS = {f.name: f for f in dataclasses.fields(NodeConfig) if dataclasses.is_dataclass(f.default_factory)}


def validate(cfg: NodeConfig) -> None:
    """Check ranges and relations; raises :class:`ConfigError` naming the bad key."""
    if not cfg.realm or len(cfg.realm) > 64:
        raise ConfigError("realm", "must be 1 to 64 characters")
    _check_hostport("listen", cfg.listen)
    for i, b in enumerate(cfg.bootstrap):
        _check_hostport(f"bootstrap[{i}]", b)
    if cfg.http is not None:
        _check_hostport("http", cfg.http)
    for name in _SECTIONS:
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float) and value <= 0:
                raise ConfigError(f"{name}.{f.name}", f"must be positive, got {value!r}")
    if cfg.pubsub.subscriber_overflow not in ("drop_oldest", "drop_newest"):
        raise ConfigError("pubsub.subscriber_overflow", "must be 'drop_oldest' or 'drop_newest'")
    if cfg.rpc.provider_policy not in ("random", "round_robin", "lowest_rtt"):
        raise ConfigError("rpc.provider_policy", "must be 'random', 'round_robin' or 'lowest_rtt'")
    if cfg.pubsub.max_message_size > cfg.transport.max_frame_size - 256:
        raise ConfigError("pubsub.max_message_size", "must be at least 256 bytes below transport.max_frame_size")
    if cfg.transport.keepalive_interval >= cfg.transport.idle_timeout:
        raise ConfigError("transport.keepalive_interval", "must be shorter than transport.idle_timeout")


def _check_hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")


def _coerce(key: str, typ: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    text = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ is bool or text == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError
        if typ is int or text == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ is float or text == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if "tuple" in str(typ):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError
        if "None" in str(typ) and (value is None or value == ""):
            return None
        if isinstance(value, str):
            return value
        raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {typ}, got {value!r}") from None


def _build(data: Mapping[str, Any]) -> NodeConfig:
    hints = get_type_hints(NodeConfig)
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(key, "must be a table")
            cls = _SECTIONS[key].default_factory
            assert isinstance(cls, type)
            shints = get_type_hints(cls)
            kwargs: dict[str, Any] = {}
            for k, v in value.items():
                if k not in shints:
                    raise ConfigError(f"{key}.{k}", "unknown setting")
                kwargs[k] = _coerce(f"{key}.{k}", shints[k], v)
            top[key] = cls(**kwargs)
        elif key in hints:
            top[key] = _coerce(key, hints[key], value)
        else:
            raise ConfigError(key, "unknown setting")
    return NodeConfig(**top)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Read a TOML file (optional), then apply ``QUICMESH_*`` environment variables, then
    ``overrides`` (e.g. from command-line flags; ``None`` values are ignored).

    Environment names: ``QUICMESH_REALM`` for top-level keys, ``QUICMESH_TRANSPORT__MAX_CONNECTIONS``
    (section, two underscores, field) for nested ones; lists are comma-separated.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    environ = os.environ if env is None else env
    for name, value in environ.items():
        if not name.startswith("QUICMESH_") or name in ("QUICMESH_SOAK", "QUICMESH_SIM_LARGE"):
            continue
        rest = name[len("QUICMESH_") :].lower()
        if "__" in rest:
            section, _, key = rest.partition("__")
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(section, "must be a table")
            data[section][key] = value
        else:
            data[rest] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return _build(data)
