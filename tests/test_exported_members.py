"""Pins the public API: adding or removing a name from ``quicmesh.__all__`` is a deliberate act."""

from __future__ import annotations

import quicmesh
import quicmesh.errors

EXPECTED_API = {
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
}

EXPECTED_ERRORS = {
    "NotAdmitted",
    "PermissionDenied",
    "TrustError",
    "AdmissionRefused",
    "AuthenticationFailed",
    "BacklinkMismatch",
    "CallTimeout",
    "ConfigError",
    "ConnectionLost",
    "ContainerFull",
    "DecodeError",
    "ForeignRealm",
    "FrameTooLarge",
    "HandshakeTimeout",
    "IdentityError",
    "InsecureKeyFile",
    "InvalidNodeId",
    "InvalidOperation",
    "InvalidTopic",
    "LimitExceeded",
    "MalformedFrame",
    "MessageTooLarge",
    "NoProvider",
    "NodeClosed",
    "OperationTooLarge",
    "Overloaded",
    "PayloadMismatch",
    "PeerIdMismatch",
    "QuicmeshError",
    "RealmMismatch",
    "RemoteError",
    "RpcError",
    "SeqGap",
    "SignatureMismatch",
    "SubscriptionClosed",
    "TimestampAhead",
    "TransportError",
    "UnknownMessageType",
    "UnknownVersion",
}


def test_public_names_are_pinned() -> None:
    assert set(quicmesh.__all__) == EXPECTED_API | EXPECTED_ERRORS
    assert len(quicmesh.__all__) == len(set(quicmesh.__all__)), "duplicate names in __all__"


def test_every_public_name_exists_and_is_documented() -> None:
    for name in quicmesh.__all__:
        obj = getattr(quicmesh, name)
        if name.startswith("__") or name == "Handler":
            continue
        assert obj.__doc__, f"quicmesh.{name} has no docstring"


def test_every_error_derives_from_quicmesh_error() -> None:
    assert set(quicmesh.errors.__all__) == EXPECTED_ERRORS
    for name in EXPECTED_ERRORS:
        assert issubclass(getattr(quicmesh, name), quicmesh.QuicmeshError), name


def test_public_classes_report_the_package_as_their_home() -> None:
    for name in ("Node", "NodeConfig", "NodeId", "KeyPair", "Subscription", "Message", "Log", "ReplicatedMap"):
        assert getattr(quicmesh, name).__module__.startswith("quicmesh."), name
