"""The guard: permission checks where actions enter, origin signatures of gossip batches, and
penalties for peers that relay invalid claims.

Theory of operation
-------------------
One :class:`Guard` per node (``NodeCore.guard``), over the node's
:class:`~quicmesh.core.trust.Trust`.

**Own actions.** :meth:`Guard.check_own` raises :class:`~quicmesh.errors.PermissionDenied` at
once when this node's certificate does not allow an action (``publish``, ``subscribe``,
``advertise``, ``call``, ``log``) on a subject; nothing is sent. :meth:`Guard.deny` counts a
denial decided elsewhere (a peer's call, a light client's request at the gateway).
:attr:`Guard.denied` counts every denial by action (``/metrics``:
``quicmesh_permission_denied_total{action=...}``). In an open realm everything is allowed and
no check runs.

**Origin signatures.** Every gossip batch is signed by its publisher where it is built
(:meth:`Guard.sign_gossip`, once per batch): Ed25519 over a label, the realm's wire id and the
batch's 32-byte digest (:func:`~quicmesh.core.plumtree.batch_digest`: publisher, epoch, first
seq, topic, payloads), and carries the publisher's certificate in an authority realm. A receiver
checks a batch whose id it has not seen (:meth:`Guard.verify_gossip`) before remembering,
caching, forwarding or delivering it: the swarm matches the topic, the signature is the
publisher's, and in an authority realm the certificate admits the publisher (``Trust.learn``:
its fast path is a lookup by the certificate's bytes) and allows ``publish`` on the topic.
Reserved topics (``$...``) are not published by users: for them ``reserved`` (the registry's
check that every advert in a ``$svc`` batch is the publisher's own and that it may
``advertise`` the name) decides instead. Verification is a pure function of (key, signature,
signed bytes), remembered process-wide (:data:`VERIFIED`, container ``guard.verified``): a node
checks each new batch once anyway, but the nodes of a simulation share one process and then one
check. A result is remembered ``gossip.seen_ttl`` seconds (the node forgets the batch's id then,
so it could not hit later) and at most :data:`VERIFIED_CAPACITY` of them: under churn of
identities the memo holds only the batches of the last ``seen_ttl``, never the keys and
signatures of publishers long gone (it was an LRU of 4,096 entries that a soak of fresh
identities kept filling for an hour, ~3 KB of RSS per churn cycle, with the parsed public keys in
a second LRU). Entries expire in :meth:`Guard.expire` (each node's housekeeping, by its own
clock: a node on another clock in the same process only expires them early, which costs a
re-check, or late, within the capacity).

**Penalties.** A batch that fails is dropped and its *sender* (the peer that relayed it, which
should have checked it too) gets an offence, unless the failure is one an honest relay may not
have seen yet (a certificate revoked, expired or not yet valid by this node's clock:
:data:`NO_PENALTY`). Log operations (:mod:`quicmesh.core.log_trust`) and adverts in lookup
answers (:mod:`quicmesh.core.advert_checks`) count the same way. ``offence_limit`` offences
within ``offence_window`` seconds (configuration, defaults :data:`OFFENCE_LIMIT` and
:data:`OFFENCE_WINDOW`) block the peer for ``block_seconds`` (default :data:`BLOCK_SECONDS`): it
is put on :attr:`Guard.kicked` (the core disconnects it right after the message) and
:meth:`Guard.blocked` is true for it (the core and the driver refuse its connections). Offences
and blocks live in TTL maps, expired by :meth:`Guard.expire`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..bounded import REGISTRY, ContainerRegistry, TtlMap
from ..config import NodeConfig
from ..errors import NotAdmitted, PermissionDenied
from ..identity import KeyPair, NodeId, signature_valid
from .mesh_messages import MGossip
from .permissions import ACTIONS, EVERYTHING, Action, Permissions
from .topics import swarm_of
from .trust import Trust

__all__ = [
    "BLOCK_SECONDS", "NO_PENALTY", "OFFENCE_LIMIT", "OFFENCE_WINDOW", "RECENT_DENIALS", "VERIFIED", "VERIFIED_CAPACITY",
    "Guard", "ReservedCheck", "gossip_signing_bytes",
]

OFFENCE_LIMIT = 3
"""Default offences within the window that get a peer disconnected and blocked
(``NodeConfig.offence_limit``)."""
OFFENCE_WINDOW = 60.0
"""Default seconds an offence counts, from a peer's first offence in the window
(``NodeConfig.offence_window``)."""
BLOCK_SECONDS = 300.0
"""Default seconds a blocked peer's connections are refused (``NodeConfig.block_seconds``)."""
RECENT_DENIALS = 50
"""Denials :attr:`Guard.recent_denials` remembers (the newest; the web console lists them)."""
_SUBJECT_CHARS = 200
"""A remembered denial's subject is cut to this many characters."""

_GOSSIP_LABEL = b"quicmesh/gossip/v1\x00"
NO_PENALTY = frozenset({"certificate revoked", "certificate expired", "certificate not yet valid"})
"""Certificate failures (``NotAdmitted`` reasons) an honest relay may not have seen yet (its
clock, its revocation list): the claim is refused but its sender is not penalised."""

ReservedCheck = Callable[[NodeId, str, list[bytes], Permissions], bool]
"""Whether a batch on a reserved topic (``$...``) by ``publisher`` with these permissions is valid."""


VERIFIED_CAPACITY = 4096
"""Signature checks :data:`VERIFIED` remembers at most (the process's, every node together)."""
_VERIFIED_TTL = 90.0
"""Default seconds a check is remembered (``gossip.seen_ttl``'s default; each node passes its own)."""

VERIFIED: TtlMap[tuple[bytes, bytes, bytes], bool] = TtlMap("guard.verified", VERIFIED_CAPACITY, _VERIFIED_TTL,
                                                            registry=REGISTRY)
"""Process-wide memo of gossip signature checks, ``(key, signature, signed bytes) -> valid`` (see
the module docstring), in the process registry (:data:`~quicmesh.bounded.REGISTRY`), not a
node's: it is shared by every node of the process, so a node's own containers stay its own."""


def _signature_valid(pub: bytes, sig: bytes, data: bytes, now: float, ttl: float) -> bool:
    """Whether ``sig`` over ``data`` verifies for the Ed25519 key ``pub`` (a pure function,
    remembered in :data:`VERIFIED` for ``ttl`` seconds from ``now``)."""
    key = (pub, sig, data)
    known = VERIFIED.get(key)
    if known is not None:
        return known
    valid = signature_valid(pub, sig, data)
    VERIFIED.set(key, valid, now, ttl)
    return valid


def gossip_signing_bytes(realm_wire_id: str, digest: bytes) -> bytes:
    """The bytes a publisher signs for a gossip batch: a label, the realm, the batch digest."""
    return _GOSSIP_LABEL + realm_wire_id.encode() + b"\x00" + digest


class Guard:
    """Permission checks, gossip signatures and peer penalties of one node (see the module
    docstring)."""

    def __init__(self, keypair: KeyPair, trust: Trust, *, wall: Callable[[float], float],
                 registry: ContainerRegistry | None = None, capacity: int = 1024,
                 config: NodeConfig | None = None) -> None:
        """``config``: the offence limits (``offence_limit``, ``offence_window``,
        ``block_seconds``); ``None``: the defaults."""
        self._key = keypair
        self.me = keypair.node_id
        self.trust = trust
        self._wall = wall
        self._prefix = _GOSSIP_LABEL + trust.wire_id.encode() + b"\x00"
        self.reserved: ReservedCheck | None = None
        """The check of batches on reserved topics (set by the core: the registry's)."""
        self.denied: dict[str, int] = dict.fromkeys(ACTIONS, 0)  # bounded: fixed keys (the actions)
        """Denied actions (own, of peers and of light clients), by action."""
        self.recent_denials: deque[tuple[int, str, str]] = deque(maxlen=RECENT_DENIALS)  # bounded: maxlen
        """The newest denials as ``(number, action, subject)``, oldest first; ``number`` counts
        every denial of this guard from 1 (the web console's "recent denials")."""
        self.denials_total = 0
        """Denials so far, every action together."""
        self.counters = {  # bounded: fixed keys
            "gossip_signed": 0, "gossip_verified": 0, "gossip_bad_signature": 0, "gossip_not_admitted": 0,
            "gossip_denied": 0, "gossip_malformed": 0, "offences": 0, "peers_blocked": 0,
            "gossip_signature_deferred": 0,
        }
        self.offence_limit = config.offence_limit if config is not None else OFFENCE_LIMIT
        """Offences within :attr:`offence_window` that block a peer."""
        self.offence_window = config.offence_window if config is not None else OFFENCE_WINDOW
        block = config.block_seconds if config is not None else BLOCK_SECONDS
        self._offences: TtlMap[NodeId, int] = TtlMap("guard.offences", capacity, self.offence_window,
                                                     registry=registry)
        self._blocked: TtlMap[NodeId, None] = TtlMap("guard.blocked", capacity, block, registry=registry)
        self._verified_ttl = config.gossip.seen_ttl if config is not None else _VERIFIED_TTL
        """Seconds this node's signature checks stay in :data:`VERIFIED` (``gossip.seen_ttl``)."""
        self.kicked: list[NodeId] = []  # bounded: at most one per message, drained by the core after it
        """Peers that just reached :attr:`offence_limit`: to disconnect."""

    # -- own actions -----------------------------------------------------------------------------

    def check_own(self, action: Action, subject: str) -> None:
        """Raise :class:`PermissionDenied` (counted) unless this node may do ``action`` on
        ``subject`` (for ``subscribe``, ``subject`` is the pattern). Reserved subjects (``$...``)
        are quicmesh's own (registry, revocations; the node's API refuses them to users); there
        are no reserved log names: ``log`` is checked on every name, as the peers check it."""
        if self.trust.open or (subject[:1] == "$" and action != "log"):
            return
        if not self.allows(self.trust.own_permissions, action, subject):
            raise self.deny(action, subject)

    @staticmethod
    def allows(perms: Permissions | None, action: Action, subject: str) -> bool:
        """Whether ``perms`` allow ``action`` on ``subject`` (None: nothing is allowed)."""
        if perms is None:
            return False
        if action == "subscribe":
            return perms.allows_subscription(subject)
        return perms.allows(action, subject)

    def deny(self, action: Action, subject: str) -> PermissionDenied:
        """Count a denial of ``action`` on ``subject``; returns the error to raise or send."""
        self.denied[action] = self.denied.get(action, 0) + 1
        self.denials_total += 1
        self.recent_denials.append((self.denials_total, action, subject[:_SUBJECT_CHARS]))
        return PermissionDenied(action, subject)

    def peer_allowed(self, peer: NodeId, action: Action, subject: str, now: float) -> bool:
        """Whether ``peer`` (a member whose certificate this node verified) may do ``action``."""
        if self.trust.open:
            return True
        return self.allows(self.trust.permissions_of(peer, self._wall(now)), action, subject)

    # -- gossip signatures -----------------------------------------------------------------------

    def sign_gossip(self, digest: bytes) -> tuple[bytes, bytes | None]:
        """The signature of a batch with ``digest`` built by this node, and its certificate."""
        self.counters["gossip_signed"] += 1
        return self._key.sign(self._prefix + digest), self.trust.own_certificate

    def verify_gossip(self, sender: NodeId, msg: MGossip, digest: bytes, now: float, *,
                      signature: bool = True) -> bool:
        """Whether a new batch ``msg`` (with ``digest``) received from ``sender`` is valid; an
        invalid one is counted and, unless excused, an offence of ``sender``. ``signature=False``
        checks everything but the origin signature (#14: a batch straight from its publisher, kept
        by a node that forwards it to nobody; it is checked in full before it is ever served)."""
        failure = self._check_gossip(msg, digest, now, signature)
        if failure is None:
            self.counters["gossip_verified" if signature else "gossip_signature_deferred"] += 1
            return True
        kind, penalise = failure
        self.counters[kind] += 1
        if penalise:
            self.offence(sender, now)
        return False

    def _check_gossip(self, msg: MGossip, digest: bytes, now: float, signature: bool = True) -> tuple[str, bool] | None:
        pub = msg.publisher
        sig = msg.sig
        if type(pub) is not bytes or len(pub) != 32 or type(sig) is not bytes or len(sig) != 64:
            return "gossip_malformed", True
        topic = msg.topic
        if msg.s != swarm_of(topic):
            return "gossip_malformed", True
        trust = self.trust
        perms: Permissions = EVERYTHING
        if not trust.open:
            try:
                cert = trust.learn(msg.cert, self._wall(now), subject=NodeId(pub), kind="node")
            except NotAdmitted as exc:
                return "gossip_not_admitted", exc.reason not in NO_PENALTY
            if cert is not None:
                perms = cert.permissions
            if topic[:1] != "$" and not perms.allows("publish", topic):
                return "gossip_denied", True
        if topic[:1] == "$" and self.reserved is not None and not self.reserved(NodeId(pub), topic, msg.payloads,
                                                                                perms):
            return "gossip_denied", True
        if signature and not _signature_valid(pub, sig, self._prefix + digest, now, self._verified_ttl):
            return "gossip_bad_signature", True
        return None

    # -- penalties -------------------------------------------------------------------------------

    def offence(self, peer: NodeId, now: float) -> None:
        """``peer`` sent invalid input: count it; at :attr:`offence_limit` within the window,
        block the peer and put it on :attr:`kicked`."""
        self.counters["offences"] += 1
        self._offences.expire(now)
        n = (self._offences.get(peer) or 0) + 1
        if n >= self.offence_limit:
            self._offences.pop(peer)
            self._blocked.set(peer, None, now)
            self.counters["peers_blocked"] += 1
            self.kicked.append(peer)
            return
        deadline = self._offences.deadline(peer)
        self._offences.set(peer, n, now, self.offence_window if deadline is None else max(deadline - now, 0.001))

    def blocked(self, peer: NodeId, now: float) -> bool:
        """Whether ``peer`` is blocked at ``now`` (its connections are refused)."""
        if not self._blocked:
            return False
        d = self._blocked.deadline(peer)
        return d is not None and d > now

    def take_kicked(self) -> list[NodeId]:
        """The peers to disconnect now (emptied)."""
        out, self.kicked = self.kicked, []
        return out

    def expire(self, now: float) -> None:
        """Forget offences, blocks and remembered signature checks whose time passed."""
        self._offences.expire(now)
        self._blocked.expire(now)
        VERIFIED.expire(now)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has work."""
        a, b = self._offences.next_deadline(), self._blocked.next_deadline()
        return a if b is None or (a is not None and a < b) else b

    def stats(self) -> dict[str, int]:
        """Counters for /health and /metrics."""
        return {**self.counters, "blocked": len(self._blocked), "offenders": len(self._offences),
                **{f"denied_{a}": n for a, n in self.denied.items()}}
