"""``quicmesh realm init|admit|revoke|show`` and ``quicmesh token issue``: the realm authority's
commands (run where the authority key is kept, offline), and the flags that give nodes and
clients their credentials.

- ``realm init --name NAME --out DIR``: a new authority key (``DIR/authority.key``, mode 0600)
  and the public realm file (``DIR/realm.pub``).
- ``realm admit --authority DIR/authority.key --node NODE_ID --allow ACTION:PATTERN ...
  [--deny ACTION:PATTERN ...] [--days N] [--serial N] --out FILE``: a member certificate.
- ``token issue --authority ... --allow ... [--deny ...] [--days N] [--key FILE] --out FILE``: a
  light-client token (mode 0600: a fresh client key unless ``--key``, and its certificate).
- ``realm revoke --authority ... (--serial N | --node NODE_ID)... [--list FILE] [--push HOST:PORT
  ... --token FILE]``: the next version of the signed revocation list (default
  ``revocations.pem`` next to the authority key); ``--push`` hands it to running nodes as a light
  client, and they spread it.
- ``realm show [--realm-file F | --cert F | --token F | --list F | --authority F]``.
- ``token bearer --token FILE``: the token's HTTP bearer, for the HTTP face
  (``Authorization: Bearer ...``; see :mod:`quicmesh.runtime.http_auth`).

ACTION is one of publish, subscribe, advertise, call, log; PATTERN is in the topic grammar, ``>``
alone meaning everything.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import secrets
import sys
import time
from pathlib import Path

from ..core.permissions import Permissions
from ..core.trust import REVOCATION_TOPIC, Authority, Certificate, Realm
from ..errors import ConfigError, IdentityError, NotAdmitted, TrustError
from ..identity import KeyPair, NodeId
from ..runtime import credentials as cred

__all__ = ["add_parsers", "run"]

_DAY = 86_400


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``realm`` and ``token`` to the ``quicmesh`` command's subcommands."""
    r = sub.add_parser("realm", help="realm authority: init, admit, revoke, show")
    rs = r.add_subparsers(dest="realm_command", required=True)
    i = rs.add_parser("init", help="create a realm: DIR/authority.key (secret) and DIR/realm.pub")
    i.add_argument("--name", required=True, help="the realm's name")
    i.add_argument("--out", required=True, metavar="DIR")
    i.add_argument("--force", action="store_true", help="replace existing files")
    a = rs.add_parser("admit", help="sign a member certificate for a node id")
    a.add_argument("--authority", required=True, metavar="FILE", help="the authority key file")
    a.add_argument("--node", required=True, metavar="NODE_ID")
    _permission_args(a)
    a.add_argument("--out", required=True, metavar="FILE")
    v = rs.add_parser("revoke", help="revoke certificates (by serial) or nodes (by id)")
    v.add_argument("--authority", required=True, metavar="FILE")
    v.add_argument("--serial", type=int, action="append", default=[], help="a certificate serial (repeat)")
    v.add_argument("--node", action="append", default=[], metavar="NODE_ID", help="a node or client id (repeat)")
    v.add_argument("--list", metavar="FILE", help="the revocation list file (default: next to the authority key)")
    v.add_argument("--push", action="append", default=[], metavar="HOST:PORT", help="hand the list to this node")
    v.add_argument("--token", metavar="FILE", help="light-client token to connect with (--push)")
    v.add_argument("--timeout", type=float, default=10.0, help="seconds per push (default 10)")
    s = rs.add_parser("show", help="print a realm file, certificate, token, revocation list or authority")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--realm-file", metavar="FILE")
    g.add_argument("--cert", metavar="FILE")
    g.add_argument("--token", metavar="FILE")
    g.add_argument("--list", metavar="FILE")
    g.add_argument("--authority", metavar="FILE")

    t = sub.add_parser("token", help="light-client credentials")
    ts = t.add_subparsers(dest="token_command", required=True)
    ti = ts.add_parser("issue", help="write a light-client token (its key and certificate, mode 0600)")
    ti.add_argument("--authority", required=True, metavar="FILE")
    _permission_args(ti)
    ti.add_argument("--key", metavar="FILE", help="the client's key file (default: a fresh key)")
    ti.add_argument("--out", required=True, metavar="FILE")
    tb = ts.add_parser("bearer", help="print the HTTP bearer of a token (Authorization: Bearer ...; #15)")
    tb.add_argument("--token", required=True, metavar="FILE", help="a light-client token (token issue)")


def _permission_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow", action="append", default=[], metavar="ACTION:PATTERN", required=True,
                   help="allowed action (repeat); ACTION: publish, subscribe, advertise, call, log")
    p.add_argument("--deny", action="append", default=[], metavar="ACTION:PATTERN", help="denied action (repeat)")
    p.add_argument("--days", type=float, default=365.0, help="validity in days from now (default 365)")
    p.add_argument("--serial", type=int, help="certificate serial (default: random 63-bit)")


def run(args: argparse.Namespace) -> int:
    """Run a ``realm`` or ``token`` subcommand; returns the exit status."""
    if args.command == "token":
        return _bearer(args) if args.token_command == "bearer" else _token(args)
    return {"init": _init, "admit": _admit, "revoke": _revoke, "show": _show}[args.realm_command](args)


def _stamp(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _init(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key, pub = out / "authority.key", out / "realm.pub"
    for p in (key, pub):
        if p.exists() and not args.force:
            raise ConfigError("--out", f"{p} exists (use --force to replace it)")
    authority = Authority.create(args.name)
    cred.save_authority(key, authority)
    cred.save_realm(pub, authority.realm)
    print(f"realm {authority.realm.name}: wire id {authority.realm.wire_id}, authority {authority.realm.authority}")
    print(f"wrote {key} (secret, mode 0600: keep it offline) and {pub} (give it to nodes and clients)")
    return 0


def _sign(args: argparse.Namespace, subject: NodeId, kind: str) -> tuple[Authority, Certificate]:
    authority = cred.load_authority(args.authority)
    try:
        perms = Permissions.parse(args.allow, args.deny)
    except ValueError as exc:
        raise ConfigError("--allow/--deny", str(exc)) from None
    if not args.days > 0:
        raise ConfigError("--days", "must be positive")
    now = int(time.time())
    serial = args.serial if args.serial is not None else secrets.randbits(63)
    c = authority.admit(subject, perms, not_before=now - 60, not_after=now + int(args.days * _DAY), serial=serial,
                        kind="client" if kind == "client" else "node")
    return authority, c


def _describe(c: Certificate) -> list[str]:
    return [f"{c.kind} certificate for {c.subject_id}", f"serial: {c.serial}",
            f"valid: {_stamp(c.not_before)} to {_stamp(c.not_after)} (unix {c.not_before} to {c.not_after})",
            *(f"  {line}" for line in c.permissions.describe())]


def _admit(args: argparse.Namespace) -> int:
    try:
        node = NodeId.parse(args.node)
    except IdentityError as exc:
        raise ConfigError("--node", str(exc)) from None
    authority, c = _sign(args, node, "node")
    cred.save_certificate(args.out, authority.realm, c)
    print(f"serial {c.serial}, expires {_stamp(c.not_after)} (unix {c.not_after}): wrote {args.out}")
    return 0


def _token(args: argparse.Namespace) -> int:
    kp = KeyPair.load(args.key) if args.key else KeyPair.generate()
    authority, c = _sign(args, kp.node_id, "client")
    cred.save_token(args.out, authority.realm, c, kp)
    print(f"client {kp.node_id}: serial {c.serial}, expires {_stamp(c.not_after)} (unix {c.not_after}): "
          f"wrote {args.out} (secret, mode 0600)")
    return 0


def _bearer(args: argparse.Namespace) -> int:
    from ..runtime.http_auth import bearer_of

    print(bearer_of(cred.load_token(args.token)))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not args.serial and not args.node:
        raise ConfigError("realm revoke", "name at least one --serial or --node")
    try:
        nodes = tuple(NodeId.parse(n) for n in args.node)
    except IdentityError as exc:
        raise ConfigError("--node", str(exc)) from None
    authority = cred.load_authority(args.authority)
    path = Path(args.list) if args.list else Path(args.authority).parent / "revocations.pem"
    previous = cred.load_revocations(path, authority.realm)
    rl = authority.revoke(previous, now=int(time.time()), serials=tuple(args.serial), subjects=nodes)
    cred.save_revocations(path, rl)
    print(f"revocation list version {rl.version}: {len(rl.serials)} serials, {len(rl.subjects)} nodes: wrote {path}")
    if args.push:
        if not args.token:
            raise ConfigError("--token", "--push connects as a light client: give its token")
        asyncio.run(_push(args, rl.encode()))
    return 0


async def _push(args: argparse.Namespace, data: bytes) -> None:
    from ..runtime.client import Client

    for address in args.push:
        async with asyncio.timeout(args.timeout):
            client = await Client.connect(address, token=args.token, reconnect=False, call_timeout=args.timeout)
            async with client:
                await client.publish(REVOCATION_TOPIC, data, confirm=True)
        print(f"pushed to {address}")


def _show(args: argparse.Namespace) -> int:
    lines: list[str]
    if args.realm_file or args.authority:
        realm = cred.load_realm(args.realm_file) if args.realm_file else cred.load_authority(args.authority).realm
        lines = _realm_lines(realm)
    elif args.cert or args.token:
        c = cred.load_certificate(args.cert) if args.cert else cred.load_token(args.token)
        lines = [*_realm_lines(c.realm), *_describe(c.certificate)]
        try:
            c.certificate.check(c.realm, time.time())
            state = "valid now (signed by the realm authority)"
        except NotAdmitted as exc:
            state = exc.reason
        lines.append(f"state: {state}")
    else:
        rl = cred.load_revocations(args.list)
        if rl is None:
            raise TrustError(f"{args.list} does not exist")
        lines = [f"revocation list version {rl.version}, issued {_stamp(rl.issued_at)}, realm {rl.realm}",
                 *(f"revoked serial: {s}" for s in rl.serials),
                 *(f"revoked node: {NodeId(n)}" for n in rl.subjects)]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def _realm_lines(realm: Realm) -> list[str]:
    return [f"realm: {realm.name}", f"wire id: {realm.wire_id}", f"authority: {realm.authority}"]


def env_default(name: str) -> str | None:
    """``QUICMESH_<NAME>`` from the environment (the client commands' credential flags)."""
    return os.environ.get(f"QUICMESH_{name}") or None
