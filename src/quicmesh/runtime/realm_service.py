"""A node's realm upkeep: revocation lists and certificate renewal, while it runs.

Theory of operation
-------------------
The node's :class:`~quicmesh.core.trust.Trust` (built from its configuration by
:func:`~quicmesh.runtime.credentials.load_trust`) is shared by the transport's handshakes and the
core; this service keeps it current and enforces it on the connections already open:

- **Revocation lists** travel on the reserved topic :data:`REVOCATION_TOPIC`, to which every
  node of an authority realm subscribes. A list arriving there (from a peer's gossip, from a
  light client's publish through this node's gateway: ``quicmesh realm revoke --push``, or from
  the revocation file changing on disk) is verified against the realm authority; a newer version
  is adopted (:meth:`~quicmesh.core.trust.Trust.apply_revocations`; a list adopted during a
  handshake, see :mod:`quicmesh.core.handshake`, is noticed at the next tick), written to the node's
  revocation file, and every connection (peer or light client) whose certificate it revokes is
  closed at once with code ``not_admitted``; later handshakes refuse them. A list that does not
  verify is dropped (counted in ``rejected``); an older or equal version changes nothing. A list
  read from disk is published by this node, so the realm hears it.
- **Renewal**: every ``trust_poll_interval`` seconds the certificate file's modification time is
  checked; a changed file is read, checked (:meth:`~quicmesh.core.trust.Trust.renew`) and used in
  the handshakes from then on, without a restart. A bad new file is logged and the old
  certificate kept. The same tick closes connections whose peer certificate expired.
- **Open realm**: nothing to do; a warning at start says that the realm is open (anyone who
  knows its name may join with every permission).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from ..config import NodeConfig
from ..core.trust import REVOCATION_TOPIC, RevocationList, Trust
from ..errors import NotAdmitted, QuicmeshError, TrustError
from .credentials import load_certificate, load_revocations, revocations_path, save_revocations
from .transport import Transport

__all__ = ["REVOCATION_TOPIC", "RealmHost", "RealmService"]


class RealmHost(Protocol):
    """What the service needs from its node."""

    trust: Trust
    config: NodeConfig
    transport: Transport

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]: ...

    async def _subscribe(self, pattern: str) -> Any: ...

    def _spawn(self, coro: Awaitable[Any]) -> None: ...

log = logging.getLogger("quicmesh.realm")


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None


class RealmService:
    """Keeps a running node's trust current (see the module docstring)."""

    def __init__(self, node: RealmHost) -> None:
        self._node = node
        self.trust: Trust = node.trust
        cfg = node.config
        self._cert_path = Path(cfg.cert) if cfg.cert else None
        self._list_path = revocations_path(cfg)
        self._cert_mtime = _mtime(self._cert_path)
        self._list_mtime = _mtime(self._list_path)
        rl = self.trust.revocations
        self._version = rl.version if rl is not None else 0
        """The version of the list stored and enforced last."""
        self._tasks: list[asyncio.Task[None]] = []  # bounded: the two tasks of this service
        self.applied = 0
        """Revocation lists adopted since start."""
        self.rejected = 0
        """Revocation lists dropped (malformed, not signed by the authority, another realm)."""
        self.closed = 0
        """Connections closed because their certificate was revoked or expired."""
        self.renewed = 0
        """Times this node's certificate was renewed from its file."""

    async def start(self) -> None:
        """Log the realm mode; in authority mode follow the revocation topic and watch files."""
        t = self.trust
        if t.open:
            log.warning("realm %r is OPEN: anyone who knows its name can join with every permission "
                        "(development only; see 'quicmesh realm init')", t.realm.name)
            return
        log.info("realm %s in authority mode (authority %s)", t.realm.name, t.realm.authority)
        sub = await self._node._subscribe(REVOCATION_TOPIC)
        self._tasks.append(asyncio.ensure_future(self._follow(sub)))
        self._tasks.append(asyncio.ensure_future(self._watch()))

    async def stop(self) -> None:
        """Stop following and watching."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    async def _follow(self, sub: Any) -> None:
        async with sub:
            async for msg in sub:
                try:
                    self.receive(msg.payload)
                except Exception:  # whatever a peer sent, the node keeps following the topic
                    self.rejected += 1
                    log.exception("revocation list handling failed")

    async def _watch(self) -> None:
        interval = self._node.config.trust_poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.poll()
            except Exception:  # a watcher must survive anything a file can hold
                log.exception("realm file check failed")

    # -- revocations -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> bool:
        """A revocation list arrived (topic or file): verify, adopt if newer, persist, enforce.
        Returns whether it was adopted."""
        try:
            rl = RevocationList.decode(data)
            revoked = self.trust.apply_revocations(rl)
        except TrustError as exc:
            self.rejected += 1
            log.info("revocation list dropped: %s", exc)
            return False
        if self.trust.revocations is not rl:
            return False  # not newer
        self._adopted(rl, len(revoked))
        return True

    def _adopted(self, rl: RevocationList, known: int) -> None:
        """Count, log, store and enforce a list just adopted."""
        self._version = rl.version
        self.applied += 1
        log.warning("revocation list version %d adopted: %d serials, %d nodes revoked (%d known)",
                    rl.version, len(rl.serials), len(rl.subjects), known)
        if self._list_path is not None:
            try:
                save_revocations(self._list_path, rl)
                self._list_mtime = _mtime(self._list_path)
            except OSError as exc:
                log.warning("could not store the revocation list in %s: %s", self._list_path, exc)
        self.enforce()

    def publish(self, rl: RevocationList) -> None:
        """Spread ``rl`` on the revocation topic (after adopting it here)."""
        self._node.publish(REVOCATION_TOPIC, rl.encode())

    def enforce(self, now: float | None = None) -> int:
        """Close every connection whose certificate is revoked or expired; returns how many."""
        wall = time.time() if now is None else now
        rl = self.trust.revocations
        transport = self._node.transport
        n = 0
        for conn in [*transport.connections(), *transport.clients()]:
            cert = conn.certificate
            if cert is None or conn.closed:
                continue
            if rl is not None and rl.revokes(cert):
                why = "certificate revoked"
            elif wall > cert.not_after:
                why = "certificate expired"
            else:
                continue
            n += 1
            log.warning("closing the connection of %s: %s", conn.peer_id.short(), why)
            self._node._spawn(conn.close("not_admitted", why))
        self.closed += n
        return n

    # -- files -------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Check the certificate and revocation files for changes and the list for a version
        adopted in a handshake; enforce revocation and expiry."""
        current = self.trust.revocations
        if current is not None and current.version != self._version:
            self._adopted(current, 0)
        m = _mtime(self._cert_path)
        if m is not None and m != self._cert_mtime and self._cert_path is not None:
            self._cert_mtime = m
            self._renew(self._cert_path)
        m = _mtime(self._list_path)
        if m is not None and m != self._list_mtime and self._list_path is not None:
            self._list_mtime = m
            try:
                rl = load_revocations(self._list_path, self.trust.realm)
            except TrustError as exc:
                log.warning("revocation file %s ignored: %s", self._list_path, exc)
                rl = None
            if rl is not None and self.receive(rl.encode()):
                self.publish(rl)
        self.enforce()

    def _renew(self, path: Path) -> None:
        try:
            cred = load_certificate(path)
            if cred.realm != self.trust.realm:
                raise NotAdmitted("certificate of another realm")
            self.trust.renew(cred.certificate, time.time())
        except (QuicmeshError, OSError) as exc:
            log.warning("new certificate in %s not used (the old one stays): %s", path, exc)
            return
        self.renewed += 1
        c = cred.certificate
        log.info("certificate renewed from %s: serial %d, valid until %d", path, c.serial, c.not_after)

    def health(self) -> dict[str, Any]:
        """The ``/health`` ``realm`` section."""
        t = self.trust
        doc: dict[str, Any] = {"mode": "open" if t.open else "authority", "name": t.realm.name}
        if t.open:
            return doc
        doc["wire_id"] = t.wire_id
        doc["authority"] = str(t.realm.authority)
        c = t.certificate
        if c is not None:
            doc["certificate"] = {"serial": c.serial, "not_before": c.not_before, "not_after": c.not_after,
                                  "expires_in_s": round(c.not_after - time.time(), 1),
                                  "permissions": c.permissions.describe()}
        rl = t.revocations
        doc["revocations"] = {"version": rl.version if rl else 0, "serials": len(rl.serials) if rl else 0,
                              "nodes": len(rl.subjects) if rl else 0, "applied_total": self.applied,
                              "rejected_total": self.rejected}
        doc["closed_total"] = self.closed
        doc["renewed_total"] = self.renewed
        doc["refused_certificates_total"] = t.rejected
        return doc
