"""The HTTP face in an authority realm (#15): the same admission, credentials and permissions as a
light client. Requests go through curl (a client no one here wrote); bearers come from
``quicmesh token issue`` tokens through ``quicmesh token bearer``."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from quicmesh.config import HttpApiConfig, NodeConfig, TransportConfig
from quicmesh.core.permissions import Permissions
from quicmesh.core.trust import REVOCATION_TOPIC, Authority
from quicmesh.identity import KeyPair
from quicmesh.runtime.credentials import load_token, save_certificate, save_realm, save_token
from quicmesh.runtime.http_auth import BEARER_CONTEXT, BEARER_PREFIX, bearer_of
from quicmesh.runtime.node import Node
from quicmesh.testing.wait import eventually

CURL = shutil.which("curl")
PIPE = asyncio.subprocess.PIPE
FAST = TransportConfig(handshake_timeout=5.0, idle_timeout=3.0, keepalive_interval=0.5)
FULL = ("publish:>", "subscribe:>", "advertise:>", "call:>", "log:>")


async def curl(*args: str, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
    """Run curl; returns (status, headers, body)."""
    assert CURL is not None, "curl is needed (.ci/run installs it)"
    proc = await asyncio.create_subprocess_exec(CURL, "-s", "-S", "-i", "--max-time", str(timeout), *args,
                                                stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 10)
    assert out, err
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def token_bearer(path: Path) -> str:
    """``quicmesh token bearer --token PATH``, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "quicmesh", "token", "bearer", "--token",
                                                str(path), stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return out.decode().strip()


def issue(tmp_path: Path, auth: Authority, name: str, allow: list[str], *, serial: int,
          not_after: int = 2**40) -> Path:
    key = KeyPair.generate()
    cert = auth.admit(key.node_id, Permissions.parse(allow), not_before=0, not_after=not_after, serial=serial,
                      kind="client")
    path = tmp_path / f"{name}.token"
    save_token(path, auth.realm, cert, key)
    return path


@pytest.mark.timeout(120)
async def test_without_a_valid_token_401_and_outside_its_permissions_403(tmp_path: Path) -> None:
    auth = Authority.create("guarded")
    kp = KeyPair.generate()
    realm_file, cert_file = tmp_path / "realm.pub", tmp_path / "node.cert"
    save_realm(realm_file, auth.realm)
    save_certificate(cert_file, auth.realm, auth.admit(kp.node_id, Permissions.parse(FULL), not_before=0,
                                                       not_after=2**40, serial=1))
    node = await Node.start(NodeConfig(realm="guarded", transport=FAST, realm_file=str(realm_file),
                                       cert=str(cert_file), http="127.0.0.2:0",
                                       http_api=HttpApiConfig(listen="127.0.0.1:0")), keypair=kp)
    api = f"http://{node.http_api_address}/v1"
    try:
        limited = issue(tmp_path, auth, "limited", ["subscribe:a.>"], serial=2)
        full = issue(tmp_path, auth, "full", list(FULL), serial=3)
        expired = issue(tmp_path, auth, "expired", list(FULL), serial=4, not_after=int(time.time()) - 3600)
        stranger = issue(tmp_path, Authority.create("guarded"), "stranger", list(FULL), serial=5)  # same name
        limited_bearer = await token_bearer(limited)
        assert limited_bearer == bearer_of(load_token(limited)) and limited_bearer.startswith(BEARER_PREFIX)
        full_bearer = bearer_of(load_token(full))

        # a bearer whose certificate is genuine but whose signature is not the client key's
        cert_part = full_bearer[len(BEARER_PREFIX):].split(".")[0]
        cert_bytes = base64.urlsafe_b64decode(cert_part + "=" * (-len(cert_part) % 4))
        forged_sig = KeyPair.generate().sign(BEARER_CONTEXT + cert_bytes)
        forged = BEARER_PREFIX + cert_part + "." + base64.urlsafe_b64encode(forged_sig).rstrip(b"=").decode()
        # the certificate bytes alone (public) are not a bearer
        cert_only = BEARER_PREFIX + cert_part

        unauthorized = {
            "no token": [],
            "not bearer": ["-H", f"Authorization: Basic {full_bearer}"],
            "garbage": ["-H", "Authorization: Bearer hello"],
            "forged signature": ["-H", f"Authorization: Bearer {forged}"],
            "certificate only": ["-H", f"Authorization: Bearer {cert_only}"],
            "expired": ["-H", f"Authorization: Bearer {bearer_of(load_token(expired))}"],
            "another realm": ["-H", f"Authorization: Bearer {bearer_of(load_token(stranger))}"],
        }
        routes = [("-X", "POST", "--data-binary", "x", f"{api}/publish/a.x"), (f"{api}/subscribe/a.%3E",),
                  ("-X", "POST", "--data-binary", "x", f"{api}/call/echo"), (f"{api}/kv/m/k",),
                  ("-X", "PUT", "--data-binary", "v", f"{api}/kv/m/k")]
        refused = 0
        for why, creds in unauthorized.items():
            for route in routes:
                status, headers, body = await curl(*creds, *route)
                doc = json.loads(body)
                assert status == 401, (why, route, status, body)
                assert doc["error"] == "NotAdmitted" and doc["message"], (why, doc)
                assert headers["www-authenticate"].startswith("Bearer")
                refused += 1
        total = len(unauthorized) * len(routes)
        print(f"\n{refused} of {total} requests without a valid token refused 401 with a JSON NotAdmitted error "
              f"({len(unauthorized)} kinds of bad credential x {len(routes)} routes)")
        assert refused == total

        # the token limited to subscribe a.> : a.> streams; everything else is 403 naming action and subject
        auth_limited = ["-H", f"Authorization: Bearer {limited_bearer}"]
        denied = {
            ("subscribe", "b.>"): (f"{api}/subscribe/b.%3E",),
            ("subscribe", ">"): (f"{api}/subscribe/%3E",),
            ("publish", "a.x"): ("-X", "POST", "--data-binary", "x", f"{api}/publish/a.x"),
            ("call", "echo"): ("-X", "POST", "--data-binary", "x", f"{api}/call/echo"),
            ("log", "m"): ("-X", "PUT", "--data-binary", "v", f"{api}/kv/m/k"),
            ("subscribe", "m"): (f"{api}/kv/m/k",),
        }
        before = dict(node.core.guard.denied)
        for (action, subject), route in denied.items():
            status, _, body = await curl(*auth_limited, *route)
            doc = json.loads(body)
            assert status == 403, (action, subject, status, body)
            assert (doc["error"], doc["action"], doc["subject"]) == ("PermissionDenied", action, subject)
        counted = sum(node.core.guard.denied.values()) - sum(before.values())
        assert counted == len(denied)
        print(f"token limited to subscribe:a.> -> {len(denied)} of {len(denied)} other requests refused 403 "
              f"naming action and subject, each counted in quicmesh_permission_denied_total")

        assert CURL is not None
        sse = await asyncio.create_subprocess_exec(CURL, "-s", "-N", *auth_limited, f"{api}/subscribe/a.%3E",
                                                   stdout=PIPE, stderr=PIPE)
        try:
            assert sse.stdout is not None
            assert await asyncio.wait_for(sse.stdout.readline(), 20) == b"event: subscribed\n"
            await asyncio.wait_for(sse.stdout.readline(), 5)  # its data line
            await asyncio.wait_for(sse.stdout.readline(), 5)  # the blank line ending the event
            await node.publish("a.hello", b"for the limited token")
            lines = [await asyncio.wait_for(sse.stdout.readline(), 10) for _ in range(3)]
            doc = json.loads(lines[2].decode()[len("data: "):])
            assert (doc["topic"], doc["payload"]) == ("a.hello", "for the limited token")
        finally:
            sse.terminate()
            await sse.wait()

        # the full token may do everything; the bearer of the same token is accepted as ?access_token= too
        status, _, body = await curl("-H", f"Authorization: Bearer {full_bearer}", "-X", "PUT", "--data-binary", "v",
                                     f"{api}/kv/m/k")
        assert status == 200, body
        status, _, body = await curl(f"{api}/kv/m/k?access_token={full_bearer}")
        assert (status, body) == (200, b"v")
        status, _, body = await curl(f"{api}/openapi.json")  # the document is public
        assert status == 200
        # revoking the full token's certificate, by a list pushed through the face itself: 401 from then on
        rl_file = tmp_path / "revocations.bin"
        rl_file.write_bytes(auth.revoke(None, now=int(time.time()), serials=(3,)).encode())
        status, _, body = await curl("-H", f"Authorization: Bearer {full_bearer}", "-X", "POST", "--data-binary",
                                     f"@{rl_file}", f"{api}/publish/{REVOCATION_TOPIC}")
        assert status == 200, body

        async def revoked() -> int:
            return (await curl("-H", f"Authorization: Bearer {full_bearer}", f"{api}/kv/m/k"))[0]

        assert await eventually(revoked, until=lambda s: s == 401, what="the revoked token is refused") == 401
        assert node.http_face is not None and node.http_face.auth.unauthorized_total == refused + 1
        print("a token revoked by serial (list pushed through the face) is refused 401 at its next request")
    finally:
        await node.stop()
