"""Every input a :class:`~quicmesh.core.node.NodeCore` accepts and every output it returns.

One module, so a reader finds in one place what can enter a node and what a node can ask its
driver to do. Inputs are frozen values handed to ``NodeCore.handle(event, now)``; outputs are the
effects the driver (the asyncio runtime or the simulator) carries out in order:

============================  ====================================================================
output                        the driver ...
============================  ====================================================================
:class:`Send`                 queues ``message`` on the connection to ``peer`` (dropped, counted,
                              when there is none)
:class:`Dial`                 dials ``peer`` at ``addresses``; reports ``PeerConnected`` or
                              ``DialFailed``
:class:`DialAddress`          dials whoever listens at ``addresses``; reports ``PeerConnected``
                              (with the address dialled) or ``DialFailed(None, addresses)``
:class:`Disconnect`           closes the connection to ``peer`` (the core already decided that
                              nothing uses it)
:class:`Deliver`,             hands topic messages to the local subscriptions matching ``topic``
:class:`DeliverBatch`
:class:`Invoke`               runs the local handler; reports ``HandlerDone``
:class:`CallResolved`         completes the caller waiting on ``token``
:class:`StateChanged`         wakes whoever waits for the peer set, a swarm or the providers to
                              change
============================  ====================================================================

Log replication adds its outputs (:mod:`quicmesh.core.log_effects`): ``StoreRead`` and
``StoreWrite`` (the driver runs the query against its store and reports ``StoreDone``),
``OperationStored`` (hand it to the local watchers of its log) and ``Appended`` (complete the
appender).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RemoteError
from ..identity import NodeId
from .effects import Deliver, DeliverBatch, Dial, DialAddress, Disconnect, Send
from .rpc import CallResolved, Invoke
from .wire import Message

__all__ = [
    "AcquireLog",
    "AddPeer",
    "Advertise",
    "AppendLog",
    "CallResolved",
    "CancelCall",
    "Deliver",
    "DeliverBatch",
    "Dial",
    "DialAddress",
    "DialFailed",
    "Disconnect",
    "Event",
    "Flush",
    "HandlerDone",
    "Invoke",
    "Join",
    "JoinTopic",
    "Lookup",
    "MessageReceived",
    "PeerConnected",
    "PeerDisconnected",
    "Publish",
    "Reconcile",
    "ReleaseLog",
    "RemovePeer",
    "Send",
    "Shutdown",
    "StartCall",
    "StateChanged",
    "StoreDone",
    "Subscribe",
    "TimerFired",
    "Unadvertise",
    "Unsubscribe",
]


# -- inputs from the network ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """An authenticated connection to ``peer`` is up (``outbound``: we dialled it, at
    ``addresses``)."""

    peer: NodeId
    addresses: tuple[str, ...] = ()
    outbound: bool = False


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The connection to ``peer`` ended; ``graceful``: closed in an orderly way (the peer stopped,
    or one side found the link idle or duplicate), not lost."""

    peer: NodeId
    graceful: bool = False


@dataclass(frozen=True, slots=True)
class DialFailed:
    """A ``Dial`` (``peer`` set) or ``DialAddress`` (``peer`` None) found nobody at ``addresses``."""

    peer: NodeId | None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """``message`` arrived from the connected ``peer``."""

    peer: NodeId
    message: Message


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The driver's one timer, armed at ``next_deadline()``, went off."""


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The driver's live connections (a safety net run every few seconds: per-peer state of a
    peer outside ``live`` is released)."""

    live: frozenset[NodeId]


# -- inputs from the application -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    """Join the realm overlay through ``bootstrap`` contacts ((id or None, addresses) each), and
    follow the realm's service adverts."""

    bootstrap: tuple[tuple[NodeId | None, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Take one reference to ``pattern``'s topic swarm."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Drop one reference to ``pattern``."""

    pattern: str


@dataclass(frozen=True, slots=True)
class JoinTopic:
    """Link into ``topic``'s swarm as a publisher (no subscription)."""

    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``topic`` (into the topic's open batch; see :class:`Flush`)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Flush:
    """Send the open gossip batches (the end of the driver's loop iteration)."""


@dataclass(frozen=True, slots=True)
class Advertise:
    """Serve procedure ``name`` and advertise it realm-wide with a lease of ``ttl`` seconds."""

    name: str
    ttl: float | None = None
    metadata: bytes | None = None


@dataclass(frozen=True, slots=True)
class Unadvertise:
    """Stop serving ``name`` and withdraw its advert."""

    name: str


@dataclass(frozen=True, slots=True)
class StartCall:
    """Call ``name`` somewhere in the realm within ``timeout`` seconds; the outcome is a
    :class:`CallResolved` carrying ``token``."""

    name: str
    payload: bytes
    timeout: float
    token: object


@dataclass(frozen=True, slots=True)
class CancelCall:
    """The caller of call ``call_id`` went away: free everything the call holds."""

    call_id: int


@dataclass(frozen=True, slots=True)
class HandlerDone:
    """A handler started by :class:`Invoke` ended: ``result``, or ``error``; both ``None`` when it
    was cancelled (no reply is sent)."""

    peer: NodeId
    call_id: int
    result: bytes | None = None
    error: RemoteError | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """Ask the realm neighbours for providers of ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class AddPeer:
    """The application says where ``peer`` can be reached."""

    peer: NodeId
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemovePeer:
    """Forget ``peer``: address book, views, and its connection if only the mesh used it."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class AcquireLog:
    """The application opened a handle on log ``name`` (the first one starts replicating it)."""

    name: str


@dataclass(frozen=True, slots=True)
class ReleaseLog:
    """The application closed a handle on log ``name`` (the last one stops replicating it)."""

    name: str


@dataclass(frozen=True, slots=True)
class AppendLog:
    """Append ``payload`` to this node's log ``name``, timestamped ``now_us`` (at least
    ``min_us``); the outcome is an ``Appended`` output."""

    name: str
    payload: bytes
    now_us: int
    min_us: int = 0


@dataclass(frozen=True, slots=True)
class StoreDone:
    """The store answered request ``req_id`` of a ``StoreRead``/``StoreWrite`` output
    (``result`` may be an exception)."""

    req_id: int
    result: object


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The node is stopping: withdraw its adverts and send what is open."""


Event = (
    PeerConnected | PeerDisconnected | DialFailed | MessageReceived | TimerFired | Reconcile | Join | Subscribe
    | Unsubscribe | JoinTopic | Publish | Flush | Advertise | Unadvertise | StartCall | CancelCall | HandlerDone
    | Lookup | AddPeer | RemovePeer | Shutdown | AcquireLog | ReleaseLog | AppendLog | StoreDone
)
"""Everything :meth:`NodeCore.handle` accepts."""


# -- outputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The peer set, a swarm's membership or the known providers changed: wake the waiters."""


STATE_CHANGED = StateChanged()
"""The one :class:`StateChanged` value (it carries nothing)."""
