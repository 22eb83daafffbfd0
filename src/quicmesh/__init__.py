"""quicmesh: a peer-to-peer mesh for Python services over QUIC, with every structure bounded.

Start a node, subscribe, publish, advertise and call::

    node = await quicmesh.Node.start(quicmesh.NodeConfig(realm="demo", bootstrap=["127.0.0.1:7001"]))
    sub = await node.subscribe("sensors.>")
    await node.publish("sensors.temp", b"23.5")
    await node.advertise("math.add", handler)
    reply = await node.call("math.add", b"2+3", timeout=5.0)
    await node.stop()

Every error raised on purpose derives from :class:`QuicmeshError`. A realm in authority mode
(:class:`Realm`, :class:`Authority`, :class:`Certificate`, :class:`Permissions`,
:class:`RevocationList`) admits only nodes and clients with a certificate of its authority.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from .config import (
    AddressBookConfig,
    FailureConfig,
    GatewayConfig,
    GossipConfig,
    MembershipConfig,
    NodeConfig,
    ObservabilityConfig,
    PubSubConfig,
    RegistryConfig,
    RpcConfig,
    StoreConfig,
    TransportConfig,
    load_config,
)
from .core.permissions import Permissions
from .core.trust import Authority, Certificate, Realm, RevocationList
from .errors import *  # noqa: F403
from .identity import KeyPair, NodeId

if TYPE_CHECKING:
    from .runtime.client import Client, ClientSubscription
    from .runtime.logs import KvChange, KvWatch, Log, LogEntry, LogWatch, ReplicatedMap
    from .runtime.message import Message
    from .runtime.node import Handler, Node, Subscription

_RUNTIME = {
    "Client": "client",
    "ClientSubscription": "client",
    "Handler": "node",
    "Message": "message",  # its own module: a light client's scripts do not load the node (#14)
    "Node": "node",
    "Subscription": "node",
    "KvChange": "logs",
    "KvWatch": "logs",
    "Log": "logs",
    "LogEntry": "logs",
    "LogWatch": "logs",
    "ReplicatedMap": "logs",
}


def __getattr__(name: str) -> Any:
    # The asyncio runtime loads on first use, so that importing the sans-IO core
    # (``quicmesh.core``) never imports asyncio through this package.
    module = _RUNTIME.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f".runtime.{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "AddressBookConfig",
    "Authority",
    "Certificate",
    "Client",
    "ClientSubscription",
    "FailureConfig",
    "GatewayConfig",
    "GossipConfig",
    "Handler",
    "KeyPair",
    "KvChange",
    "KvWatch",
    "Log",
    "LogEntry",
    "LogWatch",
    "MembershipConfig",
    "Message",
    "Node",
    "NodeConfig",
    "NodeId",
    "ObservabilityConfig",
    "Permissions",
    "PubSubConfig",
    "Realm",
    "RegistryConfig",
    "ReplicatedMap",
    "RevocationList",
    "RpcConfig",
    "StoreConfig",
    "Subscription",
    "TransportConfig",
    "__version__",
    "load_config",
    *errors.__all__,
]
