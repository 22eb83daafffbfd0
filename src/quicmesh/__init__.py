"""quicmesh: a peer-to-peer mesh for Python services over QUIC, with every structure bounded."""

from __future__ import annotations

from . import errors
from .errors import *  # noqa: F403
from .identity import KeyPair, NodeId

__version__ = "0.1.0"

__all__ = [
    "KeyPair",
    "NodeId",
    "__version__",
    *errors.__all__,
]
