"""The handshake machine's events (inputs) and outputs (:mod:`quicmesh.core.handshake`, which
re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..identity import NodeId
from .wire import Message

__all__ = [
    "Admit", "Close", "Decline", "Established", "Event", "NeedAdmission", "Output", "Received", "RttSample", "Send",
    "TimerFired", "TlsDone",
]


# -- events (inputs) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsDone:
    """TLS finished. For a dialer: ``peer`` is the id in the listener's certificate, or ``None``
    with ``problem`` when the certificate is missing or not an Ed25519 key."""

    peer: NodeId | None = None
    problem: str = ""
    binding: bytes = b""
    """Bytes naming this connection that both ends see alike and the listener chose fresh (see
    the module docstring); empty: none, the listener's ``Challenge`` supplies the nonce."""


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded frame arrived before the connection was established."""

    message: Message


@dataclass(frozen=True, slots=True)
class Admit:
    """The owner's answer to :class:`NeedAdmission`: go on."""


@dataclass(frozen=True, slots=True)
class Decline:
    """The owner's answer to :class:`NeedAdmission`: refuse with ``code`` (e.g. ``max_clients``,
    ``duplicate``, ``shutdown``)."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The owner's timer for :meth:`Handshake.next_deadline` fired."""


Event = TlsDone | Received | Admit | Decline | TimerFired

# -- outputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``message`` on the handshake stream now."""

    message: Message


@dataclass(frozen=True, slots=True)
class NeedAdmission:
    """Listener: decide whether ``peer`` may go on; answer with :class:`Admit` or :class:`Decline`
    (at once, or later for a parked attempt). ``stage`` is ``"hello"`` (identity claimed, nothing
    held yet) or ``"proof"`` (identity proved: capacity and the duplicate rule)."""

    stage: Literal["hello", "proof"]
    peer: NodeId
    role: str
    instance: bytes


@dataclass(frozen=True, slots=True)
class Established:
    """Authenticated and admitted: the connection carries application frames from now on."""

    peer: NodeId
    role: str
    instance: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """End the attempt. ``send``: tell the peer (QUIC close with ``code``); ``error``: what a
    dialer raises; ``counted``: the ``refused_total`` reason a listener counts (``None``: none)."""

    code: str
    reason: str
    error: Exception | None
    send: bool = True
    counted: str | None = None


@dataclass(frozen=True, slots=True)
class RttSample:
    """A round-trip time measured by the handshake exchange (seconds)."""

    seconds: float


Output = Send | NeedAdmission | Established | Close | RttSample
