"""Node configuration: one frozen dataclass per subsystem, nested in :class:`NodeConfig`.

Every limit that bounds memory lives here, with its unit, its default and the reason for that
default (citing the paper or peer system it comes from). Load from a TOML file and ``QUICMESH_*``
environment variables with :func:`load_config`; the environment overrides the file.

Modules: :mod:`.schema` (the dataclasses, their documented defaults, :func:`validate`),
:mod:`.loader` (TOML, environment, overrides), :mod:`.values` (type conversion and checks).
"""

from __future__ import annotations

from .loader import load_config
from .schema import (
    MAX_BATCH_MESSAGES,
    AddressBookConfig,
    AddressesConfig,
    DiscoveryConfig,
    FailureConfig,
    GatewayConfig,
    GossipConfig,
    HttpApiConfig,
    KiB,
    MembershipConfig,
    MiB,
    NodeConfig,
    ObservabilityConfig,
    PubSubConfig,
    PunchConfig,
    RegistryConfig,
    RpcConfig,
    StoreConfig,
    TransportConfig,
    validate,
)
from .values import coerce

__all__ = [
    "MAX_BATCH_MESSAGES",
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
    "coerce",
    "load_config",
    "validate",
]

_coerce = coerce
"""The name this package had for :func:`~.values.coerce` before it was split (tests import it)."""
