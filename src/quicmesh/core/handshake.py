"""The quicmesh connection handshake as a sans-IO state machine.

Theory of operation
-------------------
After TLS (QUIC's own handshake, driven by the runtime) both ends prove their node id, an Ed25519
public key, and their realm, on the connection's first stream:

1. TLS 1.3: the listener presents a certificate of its key; the runtime reads the listener's id
   from it and feeds :class:`TlsDone` ``(peer=...)`` to the dialer's machine, which checks it
   against the id it expected (:class:`~quicmesh.errors.PeerIdMismatch`) and against its own.
2. Dialer -> ``Hello(version, realm, node_id, expected, instance, role, cert)``. The listener
   checks the version, the realm (or the certificate, see below), that ``expected`` is itself and
   that the peer is not itself, then asks its owner for the admission decision at the Hello
   (:class:`NeedAdmission` ``stage="hello"``; the owner answers :class:`Admit` or
   :class:`Decline`: light clients are admitted or refused here, before any per-client state
   exists) and replies ``Challenge(nonce, cert)`` with fresh bytes from the injected nonce source
   (and, in authority mode, its own certificate).

   The realm on the wire is :attr:`~quicmesh.core.trust.Trust.wire_id`: the name of an open realm,
   a hash of name and authority key in authority mode. An open realm refuses another realm with
   ``Refuse("realm")`` (:class:`~quicmesh.errors.RealmMismatch` at the dialer) naming neither
   realm. In **authority mode** the listener checks the dialer's certificate instead
   (:meth:`~quicmesh.core.trust.Trust.learn`: the claimed node id, the role's kind, ``now`` on the
   wall clock, the revocation list); a missing, malformed, expired, revoked or foreign one (a
   certificate of another realm is how a foreign realm shows) is refused with
   ``Refuse("not_admitted", reason)`` whose reason speaks only of the certificate
   (:class:`~quicmesh.errors.NotAdmitted` at the dialer). The dialer checks the listener's
   certificate from the ``Challenge`` the same way before it sends its proof (both ways); on a
   failure it sends ``Refuse("not_admitted")`` and raises ``NotAdmitted("listener: ...")``. The
   checks run before any signature of the dialer is verified (a certificate is public; what it
   admits still has to be proven by the ``Proof``). The wall clock is ``now +
   Local.wall_offset`` (the machine reads no clock). Revocation lists catch up here too: the
   ``Hello`` shows the dialer's list version; a listener with a newer list (up to
   :data:`MAX_HANDSHAKE_LIST` bytes) sends it in the ``Challenge`` and the dialer adopts it once
   it verifies (before checking the listener's certificate against it).
3. Dialer -> ``Proof(signature)``: Ed25519 over :func:`auth_transcript` (label, nonce, dialer id,
   listener id, realm). The nonce makes a proof single-use (a replay on a new connection meets a
   new nonce); the listener id stops a malicious listener from relaying a challenge from a third
   node; the label separates this signature from any other use of the key.
4. The listener verifies against the id from ``Hello`` (``Refuse("auth")`` otherwise), then asks
   for the admission decision again (``stage="proof"``: capacity, the duplicate rule). The owner
   may answer later (a parked simultaneous dial); meanwhile any frame closes the attempt. On
   :class:`Admit` the listener sends ``Welcome`` and is :class:`Established`; the dialer is
   established when the ``Welcome`` naming its peer arrives.

**The proof in the Hello (#14: one round trip fewer).** When the runtime can name the connection
to both ends (``TlsDone.binding``: for QUIC the listener's and the dialer's initial connection ids
and the original destination id, which TLS authenticates as transport parameters and of which the
listener's are fresh random bytes of its own choosing), the dialer signs :func:`early_transcript`
(its own label, the binding, dialer id, listener id, realm) at once and sends it as
``Hello.proof``. A listener that knows the binding takes the place of the nonce by it: it runs the
Hello's checks and admission as above, verifies the proof (``Refuse("auth")`` if it does not),
asks for the admission at ``stage="proof"`` and sends ``Welcome`` with what its ``Challenge``
would have carried (its certificate, a newer revocation list, the observed address); the dialer
checks the listener's certificate from it before it counts as established. So a connection is
admitted one round trip after TLS instead of two. A proof cannot be replayed on another
connection (the listener picks new connection ids) nor to another listener (its id is signed).
A listener without a binding (or of a release before this) ignores ``Hello.proof`` and sends its
``Challenge``, which the dialer answers as in step 3.

Observed addresses (#13): ``Hello.obs`` and ``Challenge.obs`` tell the peer the address this end
sees it at (:attr:`Handshake.remote`, set by the runtime); the peer's report is :attr:`Handshake.observed`.

Before it is established, a machine accepts only the one message its phase expects (or a
``Refuse`` from the peer): anything else is refused with code ``protocol``. The handshake has a
deadline (``started + timeout``): :class:`TimerFired` at or after it closes with ``timeout``.

The machine does no I/O and reads no clock or randomness: inputs are the events below with the
current time as an argument, outputs are the dataclasses below, which the runtime executes in
order (send a frame, close the connection, publish it, record an RTT sample). Signing is injected
(``sign``), as is the nonce source (``nonce``).

The duplicate-connection rule (:func:`duplicate_survivor`, :func:`should_park`) lives in
:mod:`quicmesh.core.duplicates` and is re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..errors import (
    AdmissionRefused,
    AuthenticationFailed,
    ConnectionLost,
    HandshakeTimeout,
    IdentityError,
    NotAdmitted,
    PeerIdMismatch,
    RealmMismatch,
    TransportError,
    TrustError,
)
from ..identity import NodeId
from .duplicates import Link, duplicate_survivor, should_park
from .handshake_events import (
    Admit,
    Close,
    Decline,
    Established,
    Event,
    NeedAdmission,
    Output,
    Received,
    RttSample,
    Send,
    TimerFired,
    TlsDone,
)
from .messages import Challenge, Hello, Ping, Pong, Proof, Refuse, Welcome
from .permissions import EVERYTHING, Permissions
from .trust import Certificate, RevocationList, Trust
from .wire import Message

__all__ = [
    "ADMISSION_REASONS",
    "AUTH_LABEL",
    "CLOSE_CODES",
    "CONTROL_TYPES",
    "EARLY_LABEL",
    "MAX_HANDSHAKE_LIST",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "Admit",
    "Close",
    "Decline",
    "Established",
    "Event",
    "Handshake",
    "Link",
    "Local",
    "NeedAdmission",
    "Output",
    "Phase",
    "Received",
    "RttSample",
    "Send",
    "TimerFired",
    "TlsDone",
    "auth_transcript",
    "duplicate_survivor",
    "early_transcript",
    "refusal_error",
    "should_park",
]

PROTOCOL_VERSION = 1
"""The quicmesh handshake version carried in ``Hello``."""

AUTH_LABEL = b"quicmesh/auth/v1"
"""Protocol label that starts every signed handshake transcript (the challenge's)."""

EARLY_LABEL = b"quicmesh/auth-early/v1"
"""Protocol label of a proof sent in the ``Hello``, signed over the connection's binding."""

NONCE_LEN = 32
"""Bytes in a ``Challenge`` nonce."""

MAX_HANDSHAKE_LIST = 16 * 1024
"""Largest encoded revocation list a listener hands a dialer with an older one in its
``Challenge`` (a longer list reaches it through the revocation topic only)."""

CLOSE_CODES: dict[str, int] = {  # bounded: fixed table of codes
    "normal": 0,
    "shutdown": 1,
    "duplicate": 2,
    "evicted": 3,
    "protocol": 4,
    "realm": 5,
    "auth": 6,
    "peer_id": 7,
    "version": 8,
    "timeout": 9,
    "max_connections": 10,
    "max_incoming_handshakes": 11,
    "error": 12,
    "max_clients": 13,
    "slow_consumer": 14,
    "client_only": 15,
    "not_admitted": 16,
}
"""Close code -> QUIC application error code (the reason phrase carries the code text too)."""

ADMISSION_REASONS = ("max_connections", "max_incoming_handshakes", "max_clients")
"""Close codes that mean "a limit is reached" (:class:`~quicmesh.errors.AdmissionRefused`)."""

CONTROL_TYPES: frozenset[type[Message]] = frozenset({Ping, Pong, Refuse, Hello, Challenge, Proof, Welcome})
"""Messages an established connection handles itself (never passed to the application)."""

Role = Literal["node", "client"]


def _transcript(label: bytes, fresh: bytes, dialer: NodeId, listener: NodeId, realm: str) -> bytes:
    parts = (label, fresh, dialer.raw, listener.raw, realm.encode("utf-8"))
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def auth_transcript(nonce: bytes, dialer: NodeId, listener: NodeId, realm: str) -> bytes:
    """The bytes the dialer signs: label, nonce, dialer id, listener id, realm, each prefixed by
    its length (4 bytes, big-endian)."""
    return _transcript(AUTH_LABEL, nonce, dialer, listener, realm)


def early_transcript(binding: bytes, dialer: NodeId, listener: NodeId, realm: str) -> bytes:
    """The bytes a dialer signs for ``Hello.proof``: :func:`auth_transcript` with
    :data:`EARLY_LABEL` and the connection's binding in place of a nonce."""
    return _transcript(EARLY_LABEL, binding, dialer, listener, realm)


def refusal_error(code: str, text: str) -> Exception:
    """The exception a dialer raises for a refusal or close ``code`` sent by the listener."""
    if code in ADMISSION_REASONS:
        return AdmissionRefused(code)
    if code == "not_admitted":
        prefix = "not_admitted:"
        return NotAdmitted(text[len(prefix):].strip() if text.startswith(prefix) else text)
    if code == "realm":
        return RealmMismatch(f"listener refused: {text}")
    if code in ("auth", "peer_id"):
        return AuthenticationFailed(f"listener refused the identity proof: {text}")
    if code == "timeout":
        return HandshakeTimeout(f"listener timed the handshake out: {text}")
    if code == "version":
        return TransportError(f"listener speaks another handshake version: {text}")
    return ConnectionLost(f"connection closed during the handshake: {text}")


class Phase(enum.Enum):
    """Where a handshake stands."""

    TLS = "tls"
    AWAIT_HELLO = "await_hello"  # listener
    CHECK_HELLO = "check_hello"  # listener: waiting for the admission answer at the Hello
    AWAIT_CHALLENGE = "await_challenge"  # dialer
    AWAIT_PROOF = "await_proof"  # listener
    ADMITTING = "admitting"  # listener: proof verified, waiting for the admission answer
    AWAIT_WELCOME = "await_welcome"  # dialer
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Local:
    """This end: its id, realm (the wire id), instance (random per process start) and role;
    ``trust`` (authority mode: own certificate, revocations, the realm's authority) and
    ``wall_offset`` (wall-clock time minus the ``now`` the machine is fed, for certificate
    validity)."""

    node_id: NodeId
    realm: str
    instance: bytes
    role: str = "node"
    trust: Trust | None = None
    wall_offset: float = 0.0

    @property
    def authority(self) -> Trust | None:
        """The trust of an authority-mode realm (``None`` for an open realm)."""
        t = self.trust
        return t if t is not None and not t.open else None


class Handshake:
    """One connection's handshake, dialer or listener side (see the module docstring).

    ``sign(transcript)`` signs the dialer's proof; ``nonce(n)`` returns ``n`` fresh random bytes
    for a listener's challenge. ``now`` is the time the attempt started (the deadline is
    ``now + timeout``).
    """

    def __init__(
        self,
        local: Local,
        *,
        dialer: bool,
        now: float,
        timeout: float,
        sign: Callable[[bytes], bytes],
        nonce: Callable[[int], bytes],
        expected: NodeId | None = None,
    ) -> None:
        self.local = local
        self.dialer = dialer
        self.expected = expected
        self.timeout = timeout
        self.phase = Phase.TLS
        self.ended_in: Phase | None = None
        """The phase the handshake was in when it closed."""
        self.peer: NodeId | None = None
        """The peer's id: claimed (listener, after Hello) or from its certificate (dialer)."""
        self.peer_role = "node"
        self.peer_instance = b""
        self._deadline: float | None = now + timeout
        self._sign = sign
        self._nonce_source = nonce
        self._nonce: bytes | None = None
        self._binding = b""
        self._early_proof = b""
        self.early = False
        """Whether the dialer's proof rode in its ``Hello`` (no ``Challenge`` round trip)."""
        self._sent_at = now
        self.peer_certificate: Certificate | None = None
        """The peer's verified certificate (authority mode; ``None`` in an open realm)."""
        self._peer_revocations = 0
        self.remote = ""
        """The address this end sees the peer at (set by the runtime before it is sent)."""
        self.observed = ""
        """What the peer reported seeing this end at (``Hello.obs``/``Challenge.obs``; unchecked)."""

    @property
    def peer_permissions(self) -> Permissions | None:
        """What the peer may do: its certificate's permissions in authority mode, everything in
        an open realm; ``None`` before its certificate was checked (authority mode)."""
        if self.local.authority is None:
            return EVERYTHING
        cert = self.peer_certificate
        return cert.permissions if cert is not None else None

    @property
    def established(self) -> bool:
        """Whether the handshake completed."""
        return self.phase is Phase.OPEN

    @property
    def closed(self) -> bool:
        """Whether the handshake ended without success (or :meth:`abort` was called)."""
        return self.phase is Phase.CLOSED

    def next_deadline(self) -> float | None:
        """When :class:`TimerFired` must be fed, or ``None`` once established or closed."""
        return self._deadline

    def abort(self) -> None:
        """The connection ended for another reason: accept no more events."""
        if self.phase is not Phase.CLOSED:
            self.ended_in = self.phase
        self.phase = Phase.CLOSED
        self._deadline = None
        self._nonce = None

    def handle(self, event: Event, now: float) -> list[Output]:
        """Feed one event; return what to do, in order."""
        ph = self.phase
        if ph is Phase.CLOSED or ph is Phase.OPEN:
            return []
        if isinstance(event, Received):
            return self._received(event.message, now)
        if isinstance(event, TimerFired):
            if self._deadline is None or now < self._deadline:
                return []
            counted = None if self.dialer else "handshake_timeout"
            return self._close("timeout", f"no handshake within {self.timeout} s",
                               HandshakeTimeout(f"no handshake within {self.timeout} s"), counted=counted)
        if isinstance(event, TlsDone):
            if ph is not Phase.TLS:
                return []
            if self.dialer:
                return self._dialer_tls(event, now)
            self._binding = event.binding
            return self._to(Phase.AWAIT_HELLO)
        if ph is Phase.CHECK_HELLO:
            return self._after_hello_check(event, now)
        if ph is Phase.ADMITTING:
            return self._after_admission(event)
        return []

    # -- steps -------------------------------------------------------------------------------

    def _to(self, phase: Phase) -> list[Output]:
        self.phase = phase
        return []

    def _close(self, code: str, reason: str, error: Exception | None, *, send: bool = True,
               counted: str | None = None) -> list[Output]:
        self.abort()
        return [Close(code, reason, error, send=send, counted=counted)]

    def _refuse(self, code: str, reason: str) -> list[Output]:
        """Send ``Refuse`` then close; the dialer surfaces it, the listener counts it."""
        error = refusal_error(code, f"{code}: {reason}") if self.dialer else None
        out: list[Output] = [Send(Refuse(code=code, reason=reason))]
        out += self._close(code, reason, error, counted=None if self.dialer else code)
        return out

    def _dialer_tls(self, ev: TlsDone, now: float) -> list[Output]:
        peer = ev.peer
        if peer is None:
            reason = ev.problem or "listener presented no certificate"
            return self._close("auth", reason, AuthenticationFailed(reason))
        if self.expected is not None and peer != self.expected:
            return self._close("peer_id", "peer id mismatch", PeerIdMismatch(str(self.expected), str(peer)))
        if peer == self.local.node_id:
            return self._close("peer_id", "dialed our own node id", TransportError("dialed our own node id"))
        self.peer = peer
        self.phase = Phase.AWAIT_CHALLENGE
        self._sent_at = now
        loc = self.local
        trust = loc.authority
        cert = (trust.own_certificate or b"") if trust is not None else b""
        rl = trust.revocations if trust is not None else None
        proof = b""
        if ev.binding:
            self.early = True
            proof = self._sign(early_transcript(ev.binding, loc.node_id, peer, loc.realm))
        return [Send(Hello(version=PROTOCOL_VERSION, realm=loc.realm, node_id=loc.node_id.raw, expected=peer.raw,
                           instance=loc.instance, role=loc.role, cert=cert, revocations=rl.version if rl else 0,
                           obs=self.remote, proof=proof))]

    def _received(self, m: Message, now: float) -> list[Output]:
        ph = self.phase
        if isinstance(m, Refuse):
            return self._close(m.code, m.reason, refusal_error(m.code, f"{m.code}: {m.reason}"), send=False)
        if ph is Phase.AWAIT_HELLO and isinstance(m, Hello):
            return self._hello(m, now)
        if ph is Phase.AWAIT_CHALLENGE and isinstance(m, Challenge):
            return self._challenge(m, now)
        if ph is Phase.AWAIT_CHALLENGE and isinstance(m, Welcome) and self.early:
            return self._early_welcome(m, now)
        if ph is Phase.AWAIT_PROOF and isinstance(m, Proof):
            return self._proof(m, now)
        if ph is Phase.AWAIT_WELCOME and isinstance(m, Welcome):
            return self._welcome(m)
        return self._refuse("protocol", f"unexpected {type(m).__name__} during handshake ({ph.value})")

    def _hello(self, m: Hello, now: float) -> list[Output]:
        loc = self.local
        if m.version != PROTOCOL_VERSION:
            return self._refuse("version", f"handshake version {m.version} not supported")
        try:
            peer = NodeId(m.node_id)
        except IdentityError:
            return self._refuse("protocol", "malformed node id")
        trust = loc.authority
        if trust is not None:
            if m.realm != loc.realm and not m.cert:
                return self._refuse("not_admitted", "no certificate")
            try:
                self.peer_certificate = trust.learn(m.cert, now + loc.wall_offset, subject=peer,
                                                    kind="client" if m.role == "client" else "node")
            except NotAdmitted as exc:
                return self._refuse("not_admitted", exc.reason)
            self._peer_revocations = m.revocations
        elif m.realm != loc.realm:
            return self._refuse("realm", "realm mismatch")
        if m.expected is not None and m.expected != loc.node_id.raw:
            return self._refuse("peer_id", "this node has another id than expected")
        if peer == loc.node_id:
            return self._refuse("peer_id", "a node cannot connect to itself")
        if m.role not in ("node", "client"):
            return self._refuse("protocol", f"unknown role {m.role[:32]!r}")
        self.peer = peer
        self.peer_role = m.role
        self.peer_instance, self.observed = m.instance, m.obs
        self._early_proof = m.proof if self._binding else b""  # no binding: the Challenge's nonce
        self.phase = Phase.CHECK_HELLO
        return [NeedAdmission("hello", peer, m.role, m.instance)]

    def _after_hello_check(self, event: Event, now: float) -> list[Output]:
        if isinstance(event, Decline):
            return self._refuse(event.code, event.reason)
        if not isinstance(event, Admit):
            return []
        if self._early_proof:
            assert self.peer is not None
            loc = self.local
            self.early = True
            return self._verify(self._early_proof, early_transcript(self._binding, self.peer, loc.node_id, loc.realm),
                                [])
        self._nonce = self._nonce_source(NONCE_LEN)
        self.phase = Phase.AWAIT_PROOF
        self._sent_at = now
        cert, data = self._credentials()
        return [Send(Challenge(nonce=self._nonce, cert=cert, revocation_list=data, obs=self.remote))]

    def _credentials(self) -> tuple[bytes, bytes]:
        """Listener: its certificate and its revocation list when newer than the dialer's (both
        empty in an open realm), for the ``Challenge`` or an early ``Welcome``."""
        trust = self.local.authority
        if trust is None:
            return b"", b""
        rl = trust.revocations
        data = rl.encode() if rl is not None and rl.version > self._peer_revocations else b""
        return trust.own_certificate or b"", data if len(data) <= MAX_HANDSHAKE_LIST else b""

    def _check_listener(self, cert: bytes, revocation_list: bytes, now: float) -> list[Output]:
        """Dialer, authority mode: adopt the listener's newer revocation list, then check its
        certificate; the refusal to send and the close (empty: admitted or an open realm)."""
        trust, peer = self.local.authority, self.peer
        if trust is None or peer is None:
            return []
        if revocation_list and len(revocation_list) <= MAX_HANDSHAKE_LIST:
            try:  # the listener's newer list: adopted when the authority signed it
                trust.apply_revocations(RevocationList.decode(revocation_list))
            except TrustError:
                pass
        try:
            self.peer_certificate = trust.learn(cert, now + self.local.wall_offset, subject=peer, kind="node")
        except NotAdmitted as exc:
            out: list[Output] = [Send(Refuse(code="not_admitted", reason=exc.reason))]
            return out + self._close("not_admitted", exc.reason, NotAdmitted(f"listener: {exc.reason}"))
        return []

    def _challenge(self, m: Challenge, now: float) -> list[Output]:
        peer = self.peer
        if len(m.nonce) != NONCE_LEN or peer is None:
            return self._refuse("protocol", "bad challenge")
        refused = self._check_listener(m.cert, m.revocation_list, now)
        if refused:
            return refused
        self.early = False  # an older listener: the nonce's round trip after all
        transcript = auth_transcript(m.nonce, self.local.node_id, peer, self.local.realm)
        self.phase, self.observed = Phase.AWAIT_WELCOME, m.obs
        return [RttSample(now - self._sent_at), Send(Proof(signature=self._sign(transcript)))]

    def _proof(self, m: Proof, now: float) -> list[Output]:
        peer, nonce = self.peer, self._nonce
        assert peer is not None and nonce is not None
        self._nonce = None  # single use
        return self._verify(m.signature, auth_transcript(nonce, peer, self.local.node_id, self.local.realm),
                            [RttSample(now - self._sent_at)])

    def _verify(self, signature: bytes, transcript: bytes, before: list[Output]) -> list[Output]:
        peer = self.peer
        assert peer is not None
        try:
            peer.verify(signature, transcript)
        except IdentityError:
            return self._refuse("auth", "identity proof does not verify")
        self.phase = Phase.ADMITTING
        return [*before, NeedAdmission("proof", peer, self.peer_role, self.peer_instance)]

    def _after_admission(self, event: Event) -> list[Output]:
        if isinstance(event, Decline):
            return self._refuse(event.code, event.reason)
        if not isinstance(event, Admit):
            return []
        assert self.peer is not None
        self.phase = Phase.OPEN
        self._deadline = None
        loc = self.local
        cert, data = self._credentials() if self.early else (b"", b"")  # what the Challenge carried
        welcome = Welcome(node_id=loc.node_id.raw, instance=loc.instance, cert=cert, revocation_list=data,
                          obs=self.remote if self.early else "")
        return [Send(welcome), Established(self.peer, self.peer_role, self.peer_instance)]

    def _early_welcome(self, m: Welcome, now: float) -> list[Output]:
        """Dialer: the listener took the proof in the ``Hello``; check it as a ``Challenge``."""
        peer = self.peer
        if peer is None or m.node_id != peer.raw:
            return self._welcome(m)  # closes: it names another node
        refused = self._check_listener(m.cert, m.revocation_list, now)
        if refused:
            return refused
        self.observed = m.obs
        return [RttSample(now - self._sent_at), *self._welcome(m)]

    def _welcome(self, m: Welcome) -> list[Output]:
        peer = self.peer
        if peer is None or m.node_id != peer.raw:
            return self._close("auth", "Welcome names another node", AuthenticationFailed("Welcome names another node"))
        self.peer_instance = m.instance
        self.phase = Phase.OPEN
        self._deadline = None
        return [Established(peer, "node", m.instance)]
