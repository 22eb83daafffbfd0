"""What a node announces as its own addresses (issue #13, observed addresses), kept apart from
:mod:`.schema` (which re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["AddressesConfig"]


@dataclass(frozen=True, slots=True)
class AddressesConfig:
    """The addresses a node announces about itself (``[addresses]``; env ``QUICMESH_ADDRESSES__*``).

    By default a node announces its listen address, plus the *confirmed* observed addresses its
    peers report seeing it from (:mod:`quicmesh.core.observed`); a node listening on a wildcard
    (``0.0.0.0`` / ``::``) announces its interface addresses and confirmed observed addresses
    instead of the wildcard. ``advertise_addresses`` overrides all of that.
    """

    advertise_addresses: tuple[str, ...] = ()
    """``HOST:PORT`` addresses announced instead of the computed ones (``--advertise-address``,
    repeatable); default empty: computed (see above)."""
    observed_confirmations: int = 2
    """Distinct peers that must report the same observed address before it is confirmed and
    announced (default 2: one peer alone can never make this node announce an address)."""
    observed_reporters: int = 64
    """Peers whose latest report is kept (one report per peer; default 64; the oldest goes)."""
    observed_ttl: float = 600.0
    """Seconds a peer's report counts after it was made (default 600: a mapping that changed is
    forgotten within 10 minutes unless reported again)."""

    def __post_init__(self) -> None:
        for i, a in enumerate(self.advertise_addresses):
            host, sep, port = a.rpartition(":") if isinstance(a, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ConfigError(f"addresses.advertise_addresses[{i}]", f"expected HOST:PORT, got {a!r}")
        if len(self.advertise_addresses) > 8:
            raise ConfigError("addresses.advertise_addresses", "at most 8 addresses")
