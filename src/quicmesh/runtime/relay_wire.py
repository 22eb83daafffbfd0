"""#13 (relay): what the endpoint's connections send through: datagrams for a *virtual
address* (host :data:`VIRTUAL_HOST`) go to a :class:`VirtualRouter` (the transport's relayed
paths, :mod:`.relay_paths`), the others to the UDP socket. No qh3 here (see
:mod:`._quic_adapter`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["VIRTUAL_HOST", "VirtualRouter"]

VIRTUAL_HOST = "100::"
"""The host of every virtual (relayed) address: RFC 6666's discard-only prefix, which no real
peer can send from (qh3's Rust core parses addresses, so a virtual address must be an IP)."""


class VirtualRouter(Protocol):
    """Where datagrams for virtual addresses go (the relay paths of the transport)."""

    def send_virtual(self, data: bytes, addr: Any) -> None:
        """Send ``data`` to the relayed peer behind virtual address ``addr``."""

    def virtual_name(self, addr: Any) -> str | None:
        """The relayed address (``relay:...``) virtual address ``addr`` stands for."""


class _Wire:
    """The endpoint's UDP transport as its connections see it: datagrams to a virtual address
    go to the router, the rest to the socket."""

    __slots__ = ("_many", "_t", "router")

    def __init__(self, transport: Any, router: VirtualRouter | None) -> None:
        self._t = transport
        self.router = router
        self._many: Callable[[list[bytes], Any], None] | None = getattr(transport, "sendto_many", None)

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if addr is not None and addr[0] == VIRTUAL_HOST:
            router = self.router
            if router is not None:
                router.send_virtual(data, addr)
            return
        self._t.sendto(data, addr)

    def sendto_many(self, datagrams: list[bytes], addr: Any = None) -> None:
        """#14: a run of datagrams to one address (qh3 hands a connection's transmit over this):
        one ``sendmsg`` with UDP GSO when the socket's transport batches."""
        if addr is not None and addr[0] == VIRTUAL_HOST:
            router = self.router
            if router is not None:
                for data in datagrams:
                    router.send_virtual(data, addr)
            return
        many = self._many
        if many is not None:
            many(datagrams, addr)
        else:
            for data in datagrams:
                self._t.sendto(data, addr)

    def is_closing(self) -> bool:
        return bool(self._t.is_closing())

    def close(self) -> None:
        self._t.close()

    def abort(self) -> None:
        self._t.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)
