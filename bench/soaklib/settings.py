"""What a soak run does and under which environment: limits, short TTLs, options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HISTORY",
    "REALM",
    "RSS_GATE_MINUTES",
    "RSS_LIMIT",
    "SCRIPT",
    "SOAK_ENV",
    "TTL_KEYS",
    "SoakOptions",
    "ttl_bound",
]


SCRIPT = str(Path(__file__).resolve().parent.parent / "soak.py")
"""The command-line script (``bench/soak.py``): churner processes run it with ``churner``."""

RSS_LIMIT = 10.0
"""Bytes per churn cycle the untraced hubs' RSS may grow after warm-up (issue #6)."""

RSS_GATE_MINUTES = 10.0
"""Runs shorter than this cannot judge growth per cycle: on this 2-core machine the allocator only
levels off after ~4,000 cycles per hub, and the Python heap measured between churn rounds swings by
hundreds of bytes per cycle from run to run (-67 and +245 in two 2-minute runs whose heaps both
ended below their mid-run level once churn stopped). Short runs judge exact recovery (every
container, fd and task back to baseline) and report both slopes; longer runs also judge the RSS
and Python-heap slopes against the 10 bytes/cycle limit."""

REALM = "soak"
HISTORY = "observability.sentinel_history"
"""The sentinel's sample ring: it fills with time, not churn, so it has no pre-churn size to return to."""

SOAK_ENV: dict[str, str] = {
    "QUICMESH_TRANSPORT__IDLE_TIMEOUT": "4",
    "QUICMESH_TRANSPORT__KEEPALIVE_INTERVAL": "1",
    "QUICMESH_TRANSPORT__HANDSHAKE_TIMEOUT": "3",
    "QUICMESH_RPC__DEFAULT_TIMEOUT": "3",
    "QUICMESH_GOSSIP__SEEN_TTL": "5",
    "QUICMESH_GOSSIP__PAYLOAD_CACHE_TTL": "5",
    "QUICMESH_ADDRESS_BOOK__TTL": "5",
    "QUICMESH_REGISTRY__LEASE_TTL": "5",
    "QUICMESH_REGISTRY__SWEEP_INTERVAL": "1",
    "QUICMESH_REGISTRY__SUSPECT_TTL": "5",
    "QUICMESH_STORE__GOSSIP_BUFFER_TTL": "5",
    "QUICMESH_GOSSIP__PUBLISHER_IDLE_TTL": "5",
    "QUICMESH_MEMBERSHIP__LOST_TTL": "5",
    "QUICMESH_MEMBERSHIP__HINT_TTL": "5",
    "QUICMESH_ADDRESSES__OBSERVED_TTL": "3",
    "QUICMESH_DISCOVERY__LOCAL": "false",
    "QUICMESH_PUNCH__AUTO": "false",
    "QUICMESH_PUNCH__COOLDOWN": "5",
    "QUICMESH_PUNCH__MAX_AGE": "2.5",
    "QUICMESH_PUNCH__EXCHANGE_TIMEOUT": "1.5",
    "QUICMESH_PUNCH__DIAL_TIMEOUT": "1.5",
    "QUICMESH_PUNCH__BACKOFF": "0.5",
    "QUICMESH_PUNCH__BACKOFF_MAX": "1",
    "QUICMESH_OBSERVABILITY__SENTINEL_INTERVAL": "0.5",
    "QUICMESH_OBSERVABILITY__SENTINEL_WINDOW": "16",
    "QUICMESH_OBSERVABILITY__SENTINEL_MIN_SAMPLES": "8",
}
"""Short TTLs for hubs and churners: a soak checks that state ends, not how long it lasts.
Observed-address reports are withdrawn at the driver's 5 s reconcile, so their TTL is 3 s (3 + 5
within the 10 s recovery). Local discovery is off: a discovered peer lives as long as its mDNS
records in zeroconf's cache (their own TTLs, 2 minutes), longer than any recovery window; its
table is bounded (``discovery.max_peers``) and flooded in ``tests/test_local_discovery_forged.py``. The
automatic hole punches are off: on loopback every peer can be dialled, so a hub's automatic punch
only ever chases a churner that died (its redial failed), through a common node that has not yet
noticed the death, and that chain (detection, three exchange timeouts with backoff, then a
cooldown) outlasts the recovery window; punching's tables are bounded and flooded in
``tests/security/test_punch.py``, and a punch to a peer no common node holds ends at once. The
sentinel's history (a ring of samples, full after ``window x interval`` = 8 s here) fills with
time, not churn: it is full before warm-up ends, so it cannot pass for growth per cycle."""

TTL_KEYS = (
    "transport.idle_timeout",
    "transport.handshake_timeout",
    "rpc.default_timeout",
    "gossip.seen_ttl",
    "gossip.payload_cache_ttl",
    "address_book.ttl",
    "registry.lease_ttl",
    "registry.suspect_ttl",
    "store.gossip_buffer_ttl",
    "gossip.publisher_idle_ttl",
    "membership.lost_ttl",
    "membership.hint_ttl",
    "addresses.observed_ttl",
    "punch.cooldown",
    "punch.exchange_timeout",
    "punch.dial_timeout",
)
"""The TTLs (config keys) after which churned state must be gone; recovery may take 2x the longest."""


@dataclass
class SoakOptions:
    """What one soak run does; see ``python bench/soak.py --help``."""

    minutes: float = 2.0
    hubs: int = 2
    traced: int = 1
    churners: int = 2
    concurrency: int = 10
    round_seconds: float = 3.0
    churner_rounds: int = 8
    warmup: float = 0.25
    sample_seconds: float = 1.0
    news_rate: float = 20.0
    out: str = "bench/results/soak"
    tag: str = ""
    seed: int = 1
    quiet: bool = False
    snapshot: bool = True
    """Run hubs and churners from a copy of the package taken at the start, so that edits to the
    checkout during a long run cannot mix two versions of the protocol."""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def churn_seconds(self) -> float:
        """Churn phase length: the run's minutes less ~20 s for setup, recovery and plots."""
        return max(self.round_seconds * 4, self.minutes * 60 - 20)


def ttl_bound(env: Mapping[str, str]) -> tuple[float, dict[str, float]]:
    """The longest relevant TTL (seconds) under ``env`` and each one's value."""
    from quicmesh.config import load_config

    cfg = load_config(None, env=dict(env))
    values: dict[str, float] = {}
    for key in TTL_KEYS:
        section, _, name = key.partition(".")
        sect = getattr(cfg, section, None)
        if sect is not None and hasattr(sect, name):
            values[key] = float(getattr(sect, name))
    return max(values.values()), values
