"""``quicmesh realm init|admit|revoke|show`` and ``quicmesh token issue`` end to end (through
``main()``), the files they write (modes, formats), and a node process started with
``--realm-file``/``--cert`` that refuses a light client without a token and serves one with."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from quicmesh.cli.main import main
from quicmesh.core.trust import Realm
from quicmesh.errors import NotAdmitted, TrustError
from quicmesh.identity import KeyPair
from quicmesh.runtime import credentials as cred
from quicmesh.runtime.client import Client
from quicmesh.testing.process import NodeProcess


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def realm_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(capsys, "realm", "init", "--name", "prod", "--out", str(tmp_path / "realm"))
    assert code == 0 and "wire id r1." in out
    return tmp_path / "realm"


def test_init_writes_a_secret_key_and_a_public_realm_file(realm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = realm_dir / "authority.key", realm_dir / "realm.pub"
    assert mode(key) == 0o600 and mode(pub) == 0o644
    authority = cred.load_authority(key)
    realm = cred.load_realm(pub)
    assert realm == authority.realm and realm.name == "prod" and realm.authority == authority.keypair.node_id
    assert key.read_bytes().startswith(b"quicmesh-authority/1\n") and b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert b"PRIVATE" not in pub.read_bytes()
    code, out, _ = run(capsys, "realm", "show", "--realm-file", str(pub))
    assert code == 0 and "realm: prod" in out and f"wire id: {realm.wire_id}" in out and str(realm.authority) in out
    # a second init does not overwrite the authority
    code, _, err = run(capsys, "realm", "init", "--name", "prod", "--out", str(realm_dir))
    assert code == 1 and "exists" in err
    # an authority key readable by others is refused
    os.chmod(key, 0o640)
    with pytest.raises(TrustError, match="chmod 600"):
        cred.load_authority(key)
    code, _, err = run(capsys, "realm", "show", "--authority", str(key))
    assert code == 1 and err.startswith("error: TrustError:")


def test_admit_show_and_the_certificate_file(realm_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    node = KeyPair.generate().node_id
    out_file = tmp_path / "n.cert"
    code, out, _ = run(capsys, "realm", "admit", "--authority", str(realm_dir / "authority.key"), "--node", str(node),
                       "--allow", "publish:a.>", "--allow", "subscribe:>", "--deny", "subscribe:a.secret",
                       "--days", "30", "--serial", "77", "--out", str(out_file))
    assert code == 0 and "serial 77" in out and "expires" in out
    c = cred.load_certificate(out_file)
    assert c.certificate.serial == 77 and c.certificate.subject_id == node and c.certificate.kind == "node"
    assert c.certificate.not_after - c.certificate.not_before == pytest.approx(30 * 86_400 + 60, abs=2)
    assert c.certificate.permissions.allows("publish", "a.b") and not c.certificate.permissions.allows("publish", "b")
    assert b"BEGIN QUICMESH CERTIFICATE" in out_file.read_bytes()
    code, out, _ = run(capsys, "realm", "show", "--cert", str(out_file))
    assert code == 0
    for text in ("realm: prod", f"node certificate for {node}", "serial: 77", "allow publish:a.>",
                 "deny subscribe:a.secret", "state: valid now", "wire id: r1."):
        assert text in out, text
    # a random serial when none is given; bad input is a usage error with a clear message
    code, out, _ = run(capsys, "realm", "admit", "--authority", str(realm_dir / "authority.key"), "--node", str(node),
                       "--allow", "call:>", "--out", str(tmp_path / "m.cert"))
    assert code == 0 and cred.load_certificate(tmp_path / "m.cert").certificate.serial != 77
    code, _, err = run(capsys, "realm", "admit", "--authority", str(realm_dir / "authority.key"), "--node", str(node),
                       "--allow", "fly:>", "--out", str(tmp_path / "x.cert"))
    assert code == 1 and "unknown action" in err
    code, _, err = run(capsys, "realm", "admit", "--authority", str(realm_dir / "authority.key"), "--node", "nope",
                       "--allow", "call:>", "--out", str(tmp_path / "x.cert"))
    assert code == 1 and err.startswith("error: ConfigError: --node")


def test_token_issue_is_secret_and_holds_key_and_client_certificate(
        realm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = tmp_path / "c.token"
    code, out, _ = run(capsys, "token", "issue", "--authority", str(realm_dir / "authority.key"),
                       "--allow", "subscribe:a.>", "--out", str(tok))
    assert code == 0 and "mode 0600" in out
    assert mode(tok) == 0o600
    t = cred.load_token(tok)
    assert t.keypair is not None and t.certificate.subject == t.keypair.node_id.raw and t.certificate.kind == "client"
    # with --key the token is for that key
    kp = KeyPair.generate()
    kp.save(tmp_path / "client.key")
    code, _, _ = run(capsys, "token", "issue", "--authority", str(realm_dir / "authority.key"), "--allow", "call:>",
                     "--key", str(tmp_path / "client.key"), "--days", "1", "--out", str(tmp_path / "k.token"))
    assert code == 0 and cred.load_token(tmp_path / "k.token").certificate.subject_id == kp.node_id
    code, out, _ = run(capsys, "realm", "show", "--token", str(tok))
    assert code == 0 and "client certificate for" in out and "allow subscribe:a.>" in out
    os.chmod(tok, 0o644)
    code, _, err = run(capsys, "realm", "show", "--token", str(tok))
    assert code == 1 and "must not be accessible" in err


def test_revoke_grows_the_signed_list(realm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = str(realm_dir / "authority.key")
    node = KeyPair.generate().node_id
    code, out, _ = run(capsys, "realm", "revoke", "--authority", key, "--serial", "5", "--serial", "9")
    assert code == 0 and "version 1" in out
    code, out, _ = run(capsys, "realm", "revoke", "--authority", key, "--node", str(node))
    assert code == 0 and "version 2" in out
    rl = cred.load_revocations(realm_dir / "revocations.pem", cred.load_realm(realm_dir / "realm.pub"))
    assert rl is not None and rl.version == 2 and rl.serials == (5, 9) and rl.subjects == (node.raw,)
    code, out, _ = run(capsys, "realm", "show", "--list", str(realm_dir / "revocations.pem"))
    assert code == 0 and "revoked serial: 5" in out and f"revoked node: {node}" in out
    code, _, err = run(capsys, "realm", "revoke", "--authority", key)
    assert code == 1 and "--serial or --node" in err
    # a list signed by another authority does not verify against this realm
    other = Realm("prod", KeyPair.generate().node_id)
    with pytest.raises(TrustError):
        cred.load_revocations(realm_dir / "revocations.pem", other)


@pytest.mark.processes
@pytest.mark.timeout(120)
async def test_node_process_in_authority_mode(realm_dir: Path, tmp_path: Path) -> None:
    """``quicmesh node --realm-file --cert``; a client without a token gets NotAdmitted, one
    with a token is served; ``realm revoke --push`` reaches the node."""
    key = str(realm_dir / "authority.key")
    kp = KeyPair.generate()
    kp.save(tmp_path / "node.key")
    admin = KeyPair.generate()
    assert main(["realm", "admit", "--authority", key, "--node", str(kp.node_id), "--allow", "publish:>",
                 "--allow", "subscribe:>", "--out", str(tmp_path / "node.cert")]) == 0
    assert main(["token", "issue", "--authority", key, "--allow", "subscribe:a.>",
                 "--out", str(tmp_path / "c.tok")]) == 0
    admin.save(tmp_path / "admin.key")
    assert main(["token", "issue", "--authority", key, "--allow", "publish:$realm.revocations", "--key",
                 str(tmp_path / "admin.key"), "--out", str(tmp_path / "admin.tok")]) == 0
    node = await NodeProcess.spawn("auth", realm="prod", extra=[
        "--key", str(tmp_path / "node.key"), "--realm-file", str(realm_dir / "realm.pub"),
        "--cert", str(tmp_path / "node.cert"), "--revocations", str(tmp_path / "node.rl")])
    try:
        with pytest.raises(NotAdmitted):
            await Client.connect(node.address, realm="prod", reconnect=False)
        async with await Client.connect(node.address, token=tmp_path / "c.tok", reconnect=False) as client:
            sub = await client.subscribe("a.x")
            await sub.close()
        for target in ("--node", "--connect"):  # a short-lived node or a light client, both without credentials
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "quicmesh", "pub", target, node.address, "--timeout", "20", "a.x", "hi",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if not k.startswith("QUICMESH_")})
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 1 and "error: NotAdmitted: " in err.decode(), (target, err.decode())
        victim = cred.load_token(tmp_path / "c.tok").certificate
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quicmesh", "realm", "revoke", "--authority", key, "--serial", str(victim.serial),
            "--push", node.address, "--token", str(tmp_path / "admin.tok"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"pushed to" in out
        with pytest.raises(NotAdmitted, match="revoked"):
            await Client.connect(node.address, token=tmp_path / "c.tok", reconnect=False)
        print(f"node process: refused a client without token, served one with, refused it once revoked "
              f"(list pushed): {out.decode().strip().splitlines()[-1]}")
    finally:
        await node.stop()


def test_config_fields_and_environment_mirror_the_flags() -> None:
    from quicmesh.config import NodeConfig, load_config
    from quicmesh.errors import ConfigError

    cfg = load_config(env={"QUICMESH_REALM_FILE": "/r/realm.pub", "QUICMESH_CERT": "/r/n.cert",
                           "QUICMESH_REVOCATIONS": "/r/rl.pem", "QUICMESH_TRUST_POLL_INTERVAL": "0.5"})
    assert (cfg.realm_file, cfg.cert, cfg.revocations, cfg.trust_poll_interval) == (
        "/r/realm.pub", "/r/n.cert", "/r/rl.pem", 0.5)
    assert NodeConfig().realm_file is None and NodeConfig().cert is None
    with pytest.raises(ConfigError, match="trust_poll_interval"):
        NodeConfig(trust_poll_interval=0)
    with pytest.raises(ConfigError, match="cert"):
        NodeConfig(cert="")


async def test_node_start_refuses_bad_credentials(realm_dir: Path, tmp_path: Path) -> None:
    from quicmesh.config import NodeConfig
    from quicmesh.errors import ConfigError
    from quicmesh.runtime.node import Node

    key = str(realm_dir / "authority.key")
    kp = KeyPair.generate()
    assert main(["realm", "admit", "--authority", key, "--node", str(kp.node_id), "--allow", "publish:>",
                 "--out", str(tmp_path / "n.cert")]) == 0
    with pytest.raises(ConfigError, match="needs its member certificate"):
        await Node.start(NodeConfig(realm_file=str(realm_dir / "realm.pub")))
    with pytest.raises(ConfigError, match="admits node"):
        await Node.start(NodeConfig(cert=str(tmp_path / "n.cert")))  # another key
    other = tmp_path / "other"
    assert main(["realm", "init", "--name", "prod", "--out", str(other)]) == 0
    with pytest.raises(ConfigError, match="another realm"):
        await Node.start(NodeConfig(cert=str(tmp_path / "n.cert"), realm_file=str(other / "realm.pub")), keypair=kp)
    node = await Node.start(NodeConfig(cert=str(tmp_path / "n.cert")), keypair=kp)  # the realm from the cert file
    try:
        assert node.health()["realm"]["mode"] == "authority" and node.realm == "prod"
    finally:
        await node.stop()


async def test_a_node_loads_its_stored_revocation_list_at_start(realm_dir: Path, tmp_path: Path) -> None:
    from quicmesh.config import NodeConfig
    from quicmesh.runtime.node import Node

    key = str(realm_dir / "authority.key")
    kp, peer = KeyPair.generate(), KeyPair.generate()
    for k, name in ((kp, "n"), (peer, "p")):
        assert main(["realm", "admit", "--authority", key, "--node", str(k.node_id), "--allow", "publish:>",
                     "--serial", "1" if k is kp else "2", "--out", str(tmp_path / f"{name}.cert")]) == 0
    data = tmp_path / "data"
    assert main(["realm", "revoke", "--authority", key, "--node", str(peer.node_id),
                 "--list", str(data / "revocations.pem")]) == 0
    node = await Node.start(NodeConfig(cert=str(tmp_path / "n.cert"), data_dir=str(data)), keypair=kp)
    try:
        rl = node.trust.revocations
        assert rl is not None and rl.version == 1 and rl.subjects == (peer.node_id.raw,)
        assert node.health()["realm"]["revocations"]["version"] == 1
    finally:
        await node.stop()
    # a list that revokes the node itself: it refuses to start, saying why
    assert main(["realm", "revoke", "--authority", key, "--serial", "1", "--list", str(data / "revocations.pem")]) == 0
    with pytest.raises(NotAdmitted, match="certificate revoked"):
        await Node.start(NodeConfig(cert=str(tmp_path / "n.cert"), data_dir=str(data)), keypair=kp)
