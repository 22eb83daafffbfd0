"""The deployment files in deploy/, checked with the real tools available offline (#15).

* ``deploy/Containerfile``: parsed with BuildKit's own parser (the ``dockerfile`` package) and
  linted with hadolint; its HEALTHCHECK command is run against a real node (healthy when ready,
  failing when the node has not joined); its ``QUICMESH_*`` defaults load with the config loader.
  Where a container engine answers (``docker info`` or ``podman info``), the image is built, its
  user checked, ``quicmesh node --help`` run and a node started until the engine calls it healthy;
  without one that single test is skipped with one line saying so.
* ``deploy/compose.yaml``: the compose-spec JSON schema (vendored by ``check-jsonschema``), the
  four-node topology, every node's environment loaded by quicmesh's own loader, the four nodes
  run from those environments (host names mapped to loopback addresses) until all pass the
  compose health check, and ``docker compose config`` where the compose plugin (or
  ``docker-compose``) exists.
* ``deploy/quicmesh.service``: ``systemd-analyze verify`` (on a copy whose ``ExecStart`` is this
  checkout's ``quicmesh``, since verify requires the binary to exist; a copy with a misspelt key
  must fail, so the check is not a no-op), the hardening settings, and the offline
  ``systemd-analyze security`` rating; ``deploy/quicmesh.env`` loads with the config loader, and
  a node configured by it runs under the unit's own rules, set up as systemd does (the system
  call filter expanded by ``systemd-analyze syscall-filter``, the address families,
  ``NoNewPrivileges``, ``MemoryDenyWriteExecute``): it joins a seed and answers /ready.
* ``deploy/k8s``: every manifest against the Kubernetes API schemas of the oldest and newest
  supported versions in strict mode (``kubernetes-validate``; an unknown field must fail), the
  wiring between them (selectors, names, ports, probes, volumes), the security context, the
  ConfigMap loaded by the config loader, and the pod's start script run with a real node: pod N
  joins pod 0, pod 0 seeds the mesh (or rejoins through pod 1 once it has a key).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dockerfile  # type: ignore[import-not-found]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from quicmesh.config import load_config
from quicmesh.errors import ConfigError
from quicmesh.testing.process import NodeProcess
from quicmesh.testing.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "quicmesh.service"
ENV_FILE = DEPLOY / "quicmesh.env"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
"""The virtual environment's scripts: ``quicmesh``, ``hadolint``, ``check-jsonschema``."""

K8S_VERSIONS = ("1.27.0", "1.37.0")
"""Oldest and newest Kubernetes versions the manifests are validated against."""


def _tool(name: str) -> str:
    """A command installed with the dev extra (next to this interpreter, else on PATH)."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    assert found is not None, f"{name} not found: install the dev extra (pip install -e '.[dev]')"
    return found


def _run(args: list[str], *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _config_env(env: Mapping[str, Any]) -> dict[str, str]:
    """The ``QUICMESH_*`` part of an environment, as strings."""
    return {k: str(v) for k, v in env.items() if k.startswith("QUICMESH_")}


# -- Containerfile --------------------------------------------------------------------------------


def _instructions() -> list[Any]:
    return list(dockerfile.parse_file(str(CONTAINERFILE)))


def _final_stage() -> list[Any]:
    cmds = _instructions()
    last_from = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[last_from:]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for c in _final_stage():
        if c.cmd == "ENV":
            pairs = list(c.value)
            env.update(zip(pairs[0::2], pairs[1::2], strict=True))
    return env


def _healthcheck_argv() -> list[str]:
    (hc,) = [c for c in _final_stage() if c.cmd == "HEALTHCHECK"]
    assert hc.json and hc.value[0] == "CMD", "HEALTHCHECK must be CMD in exec (JSON) form"
    return list(hc.value[1:])


def test_containerfile_structure() -> None:
    cmds = _instructions()
    froms = [c for c in cmds if c.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    final = _final_stage()
    base = final[0].value[0]
    assert base.startswith("python:") and "-slim" in base, f"runtime base must be a slim Python image, got {base}"
    copies_from_build = [c for c in final if c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags)]
    assert copies_from_build, "the runtime stage copies the built environment from the build stage"
    (user,) = [c.value[0] for c in final if c.cmd == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"runs as a numeric non-root user (runAsNonRoot needs a uid): {user}"
    (entry,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entry.json and list(entry.value) == ["quicmesh", "node"]
    exposed = {p for c in final if c.cmd == "EXPOSE" for p in c.value}
    assert "4433/udp" in exposed, exposed
    volumes = {v for c in final if c.cmd == "VOLUME" for v in c.value}
    env = _image_env()
    assert env["QUICMESH_DATA_DIR"] in volumes, "the data directory is a volume"
    argv = _healthcheck_argv()
    assert any("/ready" in a or "/live" in a for a in argv), argv
    # the image's defaults are a valid configuration for the node's own loader
    cfg = load_config(env=_config_env(env))
    assert cfg.data_dir == env["QUICMESH_DATA_DIR"] and cfg.http is not None
    print(f"Containerfile: {len(froms)} stages, runtime {base} as uid {uid}, health {argv[-1][-60:]!r}")


def test_containerfile_lint() -> None:
    result = _run([_tool("hadolint"), "--no-color", str(CONTAINERFILE)])
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    print(f"hadolint: {len(findings)} findings in deploy/Containerfile")
    assert result.returncode == 0 and not findings, result.stdout + result.stderr


def _healthcheck(http: str) -> subprocess.CompletedProcess[str]:
    """Run the image's HEALTHCHECK command here, with this interpreter as ``python``."""
    argv = _healthcheck_argv()
    assert argv[0] == "python", argv
    env = {**os.environ, "QUICMESH_HTTP": http}
    return _run([sys.executable, *argv[1:]], env=env, timeout=30)


def _unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.processes
async def test_healthcheck_passes_on_a_ready_node_and_fails_on_one_not_joined() -> None:
    ready = await NodeProcess.spawn("ready", extra=["--http", "127.0.0.1:0"])
    lonely = await NodeProcess.spawn(
        "lonely", bootstrap=[f"127.0.0.1:{_unused_udp_port()}"], extra=["--http", "127.0.0.1:0"]
    )
    try:
        assert ready.http and lonely.http
        ok = await asyncio.to_thread(_healthcheck, ready.http)
        assert ok.returncode == 0, ok.stderr
        port = ready.http.rpartition(":")[2]
        wildcard = await asyncio.to_thread(_healthcheck, f"0.0.0.0:{port}")  # probed on loopback
        assert wildcard.returncode == 0, wildcard.stderr
        bad = await asyncio.to_thread(_healthcheck, lonely.http)
        assert bad.returncode != 0 and "503" in bad.stderr, bad.stderr
        print("HEALTHCHECK: exit 0 on a ready node (also via a 0.0.0.0 bind), exit 1 (503) on a node not joined")
    finally:
        await ready.stop()
        await lonely.stop()


def _container_engine() -> tuple[str | None, str]:
    """A container engine whose daemon answers, or ``None`` and why not."""
    why: list[str] = []
    for name in ("docker", "podman"):
        exe = shutil.which(name)
        if exe is None:
            continue
        try:
            info = _run([exe, "info"], timeout=30)
        except subprocess.TimeoutExpired:
            why.append(f"{name} info timed out")
            continue
        if info.returncode == 0:
            return exe, ""
        last = (info.stderr.strip().splitlines() or ["failed"])[-1]
        why.append(f"{name} info: {last}")
    return None, "; ".join(why) or "no docker or podman on PATH"


@pytest.mark.processes
@pytest.mark.timeout(1800)  # a first build downloads the base image and the dependencies
async def test_image_builds_and_runs_a_healthy_node() -> None:
    engine, why = _container_engine()
    if engine is None:
        pytest.skip(f"no container engine reachable ({why}): image not built")
    tag = f"quicmesh:test-{uuid.uuid4().hex[:8]}"
    name = f"quicmesh-test-{uuid.uuid4().hex[:8]}"
    keep_healthcheck = ["--format", "docker"] if Path(engine).name == "podman" else []  # OCI drops HEALTHCHECK
    build = await asyncio.to_thread(
        _run, [engine, "build", *keep_healthcheck, "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)], timeout=1200
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        who = await asyncio.to_thread(_run, [engine, "run", "--rm", "--entrypoint", "id", tag, "-u"])
        assert who.returncode == 0 and who.stdout.strip() != "0", who.stdout + who.stderr
        helped = await asyncio.to_thread(_run, [engine, "run", "--rm", tag, "--help"])
        assert helped.returncode == 0 and "usage:" in helped.stdout and "--listen" in helped.stdout, helped.stderr
        started = await asyncio.to_thread(
            _run, [engine, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                   "-e", "QUICMESH_REALM=ci", tag])
        assert started.returncode == 0, started.stderr

        def health() -> str:
            out = _run([engine, "inspect", "--format", "{{.State.Health.Status}}", name])
            return out.stdout.strip()

        await eventually(lambda: asyncio.to_thread(health), until=lambda s: s in ("healthy", "unhealthy"),
                         timeout=120, interval=1.0, what="the container's health check settles")
        logs = await asyncio.to_thread(_run, [engine, "logs", name])
        assert health() == "healthy", logs.stdout + logs.stderr
        assert "listening on" in logs.stdout, logs.stdout + logs.stderr
        print(f"image {tag}: built, runs as uid {who.stdout.strip()}, node container healthy")
    finally:
        await asyncio.to_thread(_run, [engine, "rm", "-f", name])
        await asyncio.to_thread(_run, [engine, "rmi", "-f", tag])


# -- compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_compose_file_matches_the_compose_spec() -> None:
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr
    checked = ["compose-spec schema"]
    # `docker compose config` (the real loader: interpolation, merge keys, references) where present
    compose_cli: list[str] | None = None
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        compose_cli = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose_cli = [str(shutil.which("docker-compose"))]
    if compose_cli is not None:
        config = _run([*compose_cli, "-f", str(COMPOSE), "config", "--quiet"])
        assert config.returncode == 0, config.stdout + config.stderr
        checked.append("`compose config`")
    print(f"deploy/compose.yaml: valid ({', '.join(checked)})")


def test_compose_is_a_four_node_mesh() -> None:
    doc = _compose()
    services: dict[str, Any] = doc["services"]
    assert len(services) == 4, sorted(services)
    envs = {name: {k: str(v) for k, v in svc["environment"].items()} for name, svc in services.items()}
    seeds = [name for name, env in envs.items() if "QUICMESH_BOOTSTRAP" not in env]
    assert len(seeds) == 1, f"exactly one bootstrap node, got {seeds}"
    (seed,) = seeds
    seed_listen = envs[seed]["QUICMESH_LISTEN"]
    realms = {env["QUICMESH_REALM"] for env in envs.values()}
    assert len(realms) == 1 and realms != {"default"}, f"one realm, set explicitly: {realms}"
    for name, svc in services.items():
        env = envs[name]
        cfg = load_config(env=_config_env(env))  # the node's own loader accepts the environment
        host = cfg.listen.rpartition(":")[0]
        assert host == svc["hostname"], f"{name} listens on its own host name, which peers resolve"
        assert cfg.data_dir is not None and any(v.endswith(":" + cfg.data_dir) for v in svc["volumes"]), name
        assert cfg.http is not None and svc["ports"], f"{name} serves /ready and publishes its HTTP port"
        http_port = cfg.http.rpartition(":")[2]
        assert any(str(p).endswith(f":{http_port}/tcp") for p in svc["ports"]), svc["ports"]
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{http_port}/ready" in probe, probe
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == CONTAINERFILE
        if name != seed:
            assert cfg.bootstrap == (seed_listen,), f"{name} joins through {seed}"
            assert svc["depends_on"][seed]["condition"] == "service_healthy", name
        for vol in svc["volumes"]:
            assert vol.split(":")[0] in doc["volumes"], f"{name}: undeclared volume {vol}"
        for net in svc["networks"]:
            assert net in doc["networks"], f"{name}: undeclared network {net}"
    print(f"compose: 1 bootstrap node ({seed}) + {len(services) - 1} joining it, realm {realms.pop()}")


async def _stop_all(procs: list[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM each process (killed if it has not exited 20 s later); their exit codes."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(await asyncio.wait_for(proc.wait(), 20))
        except TimeoutError:
            proc.kill()
            codes.append(await proc.wait())
    return codes


@pytest.mark.processes
async def test_compose_mesh_forms_when_run_without_containers(tmp_path: Path) -> None:
    """The compose file's four nodes, each run as its container runs it (``quicmesh node``
    configured by the service's environment alone), with each host name given its own loopback
    address (127.0.0.2, ...) in place of the container's: the bootstrap node passes the compose
    health check first (``depends_on: service_healthy``), then the three others join it and pass
    it too, and the bootstrap node holds a connection to each of them."""
    services: dict[str, Any] = _compose()["services"]
    hosts = {svc["hostname"]: f"127.0.0.{i + 2}" for i, svc in enumerate(services.values())}

    def local(value: str) -> str:
        for host, ip in hosts.items():
            value = re.sub(rf"(^|,){re.escape(host)}:", rf"\g<1>{ip}:", value)
        return value

    def probe(name: str) -> subprocess.CompletedProcess[str]:
        """The service's own health check command, aimed at the node's loopback address."""
        argv = [str(a).replace("127.0.0.1:", f"{hosts[services[name]['hostname']]}:")
                for a in services[name]["healthcheck"]["test"][1:]]
        assert argv[0] == "python", argv
        return _run([sys.executable, *argv[1:]], timeout=30)

    async def healthy(name: str) -> None:
        await eventually(lambda: asyncio.to_thread(probe, name), until=lambda r: r.returncode == 0,
                         timeout=60, interval=0.2, what=f"{name} passes its compose health check")

    procs: list[asyncio.subprocess.Process] = []

    async def start(name: str) -> None:
        svc = services[name]
        ip = hosts[svc["hostname"]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUICMESH_")}
        env.update({k: local(str(v)) for k, v in svc["environment"].items()})
        env["QUICMESH_HTTP"] = env["QUICMESH_HTTP"].replace("0.0.0.0:", f"{ip}:")
        env["QUICMESH_DATA_DIR"] = str(tmp_path / name)
        log = (tmp_path / f"{name}.log").open("wb")
        procs.append(await asyncio.create_subprocess_exec(
            _tool("quicmesh"), "node", env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    (seed,) = [name for name, svc in services.items() if "QUICMESH_BOOTSTRAP" not in svc["environment"]]
    joiners = [name for name in services if name != seed]
    try:
        await start(seed)
        await healthy(seed)
        for name in joiners:
            assert services[name]["depends_on"][seed]["condition"] == "service_healthy"
            await start(name)
        for name in joiners:
            await healthy(name)
        seed_http = local(services[seed]["environment"]["QUICMESH_HTTP"].replace("0.0.0.0", seed))

        def connections() -> int:
            with urllib.request.urlopen(f"http://{seed_http}/health", timeout=5) as resp:
                doc = json.load(resp)
            return int(doc["gauges"]["connections"])

        seen = await eventually(lambda: asyncio.to_thread(connections), until=lambda n: n >= len(joiners),
                                timeout=30, interval=0.2, what="the bootstrap node is connected to every other")
        print(f"compose topology on loopback: {len(services)} nodes healthy, bootstrap holds {seen} connections")
    except BaseException:
        for name in services:
            log_path = tmp_path / f"{name}.log"
            if log_path.exists():
                print(f"--- {name}\n{log_path.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        codes = await _stop_all(procs)
    assert codes == [0] * len(services), codes


# -- systemd ------------------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


@pytest.fixture
def unit_copy(tmp_path: Path) -> Iterator[Path]:
    """The unit with ``ExecStart`` pointing at this checkout's ``quicmesh`` (verify needs the
    binary to exist) and ``EnvironmentFile`` at deploy/quicmesh.env; everything else as shipped."""
    exec_start = _unit_settings()["Service.ExecStart"][0].split()[0]
    lines = []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("ExecStart="):
            line = line.replace(exec_start, _tool("quicmesh"), 1)
        elif line.startswith("EnvironmentFile="):
            line = f"EnvironmentFile={ENV_FILE}"
        lines.append(line)
    path = tmp_path / "quicmesh.service"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    yield path


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found (Debian: apt-get install systemd; .ci/run does)"
    return _run([analyze, "verify", "--man=no", str(path)], timeout=60)


def test_systemd_unit_verifies(unit_copy: Path) -> None:
    result = _verify(unit_copy)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )
    # the same check on a broken copy must complain: it is not a no-op
    broken = unit_copy.with_name("broken.service")
    broken.write_text(unit_copy.read_text(encoding="utf-8").replace("NoNewPrivileges=", "NoNewPrivilege="),
                      encoding="utf-8")
    complaint = _verify(broken)
    assert "NoNewPrivilege" in complaint.stdout + complaint.stderr, complaint
    print("systemd-analyze verify: deploy/quicmesh.service clean; a misspelt key is reported")


REQUIRED_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "Restart": "on-failure",
    "DynamicUser": "yes",
    "StateDirectory": "quicmesh",
}


def test_systemd_unit_is_hardened(unit_copy: Path) -> None:
    settings = _unit_settings()
    for key, value in REQUIRED_HARDENING.items():
        assert value in settings.get(f"Service.{key}", []), f"{key}={value} missing: {settings.get('Service.' + key)}"
    for key in ("MemoryMax", "LimitNOFILE", "EnvironmentFile"):
        assert settings.get(f"Service.{key}"), f"{key} missing"
    assert settings["Service.ExecStart"][0].split()[1:] == ["node"]
    # the data directory is the state directory systemd creates for the transient user
    data_dir = dict(v.split("=", 1) for v in settings["Service.Environment"])["QUICMESH_DATA_DIR"]
    assert data_dir == "/var/lib/" + settings["Service.StateDirectory"][0]
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    rating = _run([analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit_copy)], timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", rating.stdout)
    assert match, rating.stdout + rating.stderr
    print(f"systemd-analyze security: exposure {match.group(1)} of 10 (threshold 2.0)")
    assert rating.returncode == 0 and float(match.group(1)) <= 2.0, rating.stdout[-2000:]


def _syscall_groups() -> dict[str, list[str]]:
    """systemd's system call groups (``systemd-analyze syscall-filter``): name -> members."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    out = _run([analyze, "syscall-filter", "--no-pager"]).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def _unit_syscalls() -> set[str]:
    """The system calls the unit allows: its ``SystemCallFilter=`` lines, in order, as systemd
    reads them (an allow list, then ``~`` entries taken out)."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    for value in _unit_settings()["Service.SystemCallFilter"]:
        deny = value.startswith("~")
        names = _expand(value.lstrip("~").split(), groups)
        allowed = allowed - names if deny else allowed | names
    return allowed | _expand(["@default"], groups)  # systemd always permits @default


_SANDBOX_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(ok, what):
    if not ok:
        sys.exit(f"{what} failed: errno {ctypes.get_errno()}")
check(libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS")  # NoNewPrivileges=yes
check(libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE (Linux 6.3+)")  # MemoryDenyWriteExecute=yes
sc = ctypes.CDLL("libseccomp.so.2")
sc.seccomp_init.restype = ctypes.c_void_p
sc.seccomp_init.argtypes = [ctypes.c_uint32]
sc.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
sc.seccomp_load.argtypes = [ctypes.c_void_p]
sc.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1  # SystemCallErrorNumber=EPERM
ctx = sc.seccomp_init(EPERM)
check(ctx, "seccomp_init")
for name in os.environ.pop("SANDBOX_SYSCALLS").split(","):
    nr = sc.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0 and name != "socket":
        check(sc.seccomp_rule_add_array(ctx, ALLOW, nr, 0, None) == 0, f"allow {name}")
nr = sc.seccomp_syscall_resolve_name(b"socket")
for family in map(int, os.environ.pop("SANDBOX_FAMILIES").split(",")):  # RestrictAddressFamilies=
    cmp = Cmp(0, 4, family, 0)  # SCMP_CMP_EQ on the first argument
    check(sc.seccomp_rule_add_array(ctx, ALLOW, nr, 1, ctypes.byref(cmp)) == 0, f"allow socket({family})")
check(sc.seccomp_load(ctx) == 0, "seccomp_load")
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Run argv[1:] under the unit's process rules, set up as systemd sets them up: no new privileges,
W^X memory (``PR_SET_MDWE``, what ``MemoryDenyWriteExecute=`` uses on Linux 6.3+), a seccomp
allow list of the unit's system calls (EPERM otherwise) and ``socket()`` for the unit's address
families only. All of it holds across execve (and the node's own re-exec)."""


@pytest.mark.processes
async def test_node_runs_under_the_units_sandbox(tmp_path: Path) -> None:
    """A node configured by deploy/quicmesh.env runs under the unit's own system call filter,
    address families, NoNewPrivileges and MemoryDenyWriteExecute: it starts, opens its store,
    completes QUIC/TLS handshakes, joins a seed, serves /ready and stops cleanly on SIGTERM."""
    syscalls = _unit_syscalls()
    assert {"sendmsg", "recvmsg", "epoll_wait", "mmap"} <= syscalls and "reboot" not in syscalls
    families = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
    (restrict,) = _unit_settings()["Service.RestrictAddressFamilies"]
    sandbox = {"SANDBOX_SYSCALLS": ",".join(sorted(syscalls)),
               "SANDBOX_FAMILIES": ",".join(str(int(families[f])) for f in restrict.split())}
    # the rules hold in a program exec'd under them: a netlink socket is refused, W^X is on
    probe = _run([sys.executable, "-c", _SANDBOX_EXEC, sys.executable, "-c",
                  "import ctypes, socket\n"
                  "print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))\n"
                  "try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\nexcept PermissionError:\n"
                  "    print('netlink refused')\n"], env={**os.environ, **sandbox})
    assert probe.returncode == 0 and probe.stdout.split("\n")[:2] == ["1", "netlink refused"], probe
    seed = await NodeProcess.spawn("seed", realm="prod", extra=["--http", "127.0.0.1:0"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICMESH_")}
    env.update(_env_file(ENV_FILE))
    env.update(sandbox)
    env.update({"QUICMESH_LISTEN": "127.0.0.1:0", "QUICMESH_HTTP": "127.0.0.1:0", "QUICMESH_BOOTSTRAP": seed.address,
                "QUICMESH_DATA_DIR": str(tmp_path), "QUICMESH_REALM": "prod"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SANDBOX_EXEC, _tool("quicmesh"), "node", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "listening on" in line, line
        await seed.wait_peers(1, timeout=30)
        http = re.search(r"http://([0-9.]+:[0-9]+)/metrics", line)
        assert http, line
        ready = await asyncio.to_thread(_healthcheck, http.group(1))
        assert ready.returncode == 0, ready.stderr
        assert (tmp_path / "node.key").exists()
        print(f"node under the unit's sandbox ({len(syscalls)} system calls allowed, {restrict}, W^X, "
              "no new privileges): started, joined a seed, /ready 200")
    finally:
        codes = await _stop_all([proc])
        await seed.stop()
    assert codes == [0], (await proc.stderr.read()).decode() if proc.stderr else codes


def _env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.isidentifier(), f"not KEY=VALUE: {raw!r}"
        env[key] = value
    return env


def test_systemd_environment_file_loads() -> None:
    env = _env_file(ENV_FILE)
    assert env and all(k.startswith("QUICMESH_") for k in env), sorted(env)
    cfg = load_config(env=env)
    assert cfg.realm == env["QUICMESH_REALM"] and cfg.bootstrap and cfg.listen == env["QUICMESH_LISTEN"]
    # a misspelt variable is refused at start, naming it (the file's header says so)
    with pytest.raises(ConfigError, match="QUICMESH_REALMS"):
        load_config(env={**env, "QUICMESH_REALMS": "x"})
    print(f"deploy/quicmesh.env: {len(env)} settings load")


# -- Kubernetes -----------------------------------------------------------------------------------


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _k8s_docs() if d["kind"] == kind]
    return doc


def test_k8s_manifests_validate_against_the_api_schemas() -> None:
    docs = _k8s_docs()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"], kinds
    for version in K8S_VERSIONS:
        for name, doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} ({doc['kind']}) invalid for Kubernetes {version}: {exc}")
    # strict mode refuses an unknown field, so a typo in the manifests cannot pass
    sts = _kind("StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
    print(f"{len(docs)} Kubernetes resources valid (strict) against {' and '.join(K8S_VERSIONS)}; a typo is refused")


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, (listed, present)


def _pod() -> tuple[dict[str, Any], dict[str, Any]]:
    sts = _kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_k8s_statefulset_wiring_and_security() -> None:
    sts, svc, cm, pdb = (_kind(k) for k in ("StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"))
    pod, container = _pod()
    labels = sts["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    # headless Service named by serviceName, selecting the pods, publishing not-ready pods for bootstrap
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    # ordered starts would deadlock a full restart: pod 0 (with a key) waits to join pod 1
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert selects(svc["spec"]["selector"]) and selects(sts["spec"]["selector"]["matchLabels"])
    assert selects(pdb["spec"]["selector"]["matchLabels"]) and pdb["spec"].get("maxUnavailable") == 1
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["quic"]["protocol"] == "UDP" and ports["http"]["protocol"] == "TCP"
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    # probes: /ready for readiness, /live for liveness, on the HTTP port the ConfigMap binds
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    cfg_env = dict(cm["data"])
    assert cfg_env["QUICMESH_HTTP"].rpartition(":")[2] == str(ports["http"]["containerPort"])
    # security: non-root (the image's uid), read-only root, no capabilities, no escalation
    image_uid = int(next(c.value[0] for c in _final_stage() if c.cmd == "USER").split(":")[0])
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == image_uid and psc["fsGroup"] == image_uid
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert pod["enableServiceLinks"] is False, "service links would inject QUICMESH_* variables the loader refuses"
    assert pod["automountServiceAccountToken"] is False
    res = container["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    # the data volume: a claim per pod, mounted where QUICMESH_DATA_DIR points
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == cfg_env["QUICMESH_DATA_DIR"]
    assert container["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    # the environment a pod ends up with loads with quicmesh's own loader
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    pod_env = {**cfg_env, **env, "QUICMESH_LISTEN": env["QUICMESH_LISTEN"].replace("$(POD_IP)", "10.1.2.3")}
    cfg = load_config(env={**_config_env(pod_env), "QUICMESH_BOOTSTRAP": env["SEED_PEER"]})
    pod0 = f"{sts['metadata']['name']}-0.{svc['metadata']['name']}:4433"  # pod 0's stable DNS name
    assert cfg.listen == "10.1.2.3:4433" and cfg.bootstrap == (pod0,)
    assert cfg.observability.http_allow_remote is True
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    print(f"StatefulSet {name}: {replicas} pods joining {pod0}, uid {image_uid}, probes and wiring ok")


def _start_script() -> str:
    _, container = _pod()
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    assert isinstance(script, str)
    return script


def _pod_env(pod_name: str, data_dir: Path, seed: str, reseed: str) -> dict[str, str]:
    """What a pod's start script sees, with loopback addresses instead of pod IPs and DNS names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICMESH_")}
    env.update({str(k): str(v) for k, v in _kind("ConfigMap")["data"].items()})
    env.update({
        "POD_NAME": pod_name, "SEED_PEER": seed, "RESEED_PEER": reseed, "QUICMESH_LISTEN": "127.0.0.1:0",
        "QUICMESH_HTTP": "127.0.0.1:0", "QUICMESH_OBSERVABILITY__HTTP_ALLOW_REMOTE": "false",
        "QUICMESH_DATA_DIR": str(data_dir), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def test_k8s_start_script_picks_the_bootstrap_peer(tmp_path: Path) -> None:
    """Pod 0 seeds the mesh on its first start and rejoins through pod 1 once it has a key; pod N
    joins through pod 0. ``quicmesh`` is a stand-in here that prints what it was given."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "quicmesh"
    fake.write_text('#!/bin/sh\necho "args=$* bootstrap=${QUICMESH_BOOTSTRAP:-none}"\n', encoding="utf-8")
    fake.chmod(0o755)
    script = _start_script()

    def run(pod: str, data_dir: Path) -> str:
        env = _pod_env(pod, data_dir, "seed:4433", "reseed:4433")
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
        result = _run(["/bin/sh", "-c", script], env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    fresh, used = tmp_path / "fresh", tmp_path / "used"
    fresh.mkdir()
    used.mkdir()
    (used / "node.key").write_bytes(b"")
    assert run("quicmesh-0", fresh) == "args=node bootstrap=none"
    assert run("quicmesh-0", used) == "args=node bootstrap=reseed:4433"
    assert run("quicmesh-3", fresh) == "args=node bootstrap=seed:4433"
    assert run("quicmesh-10", used) == "args=node bootstrap=seed:4433"


@pytest.mark.processes
async def test_k8s_start_script_joins_a_real_seed(tmp_path: Path) -> None:
    """The pod's start script, with the ConfigMap's environment, runs a real ``quicmesh node``
    that joins the seed node (pod 0's place taken by a node on loopback)."""
    realm = str(_kind("ConfigMap")["data"]["QUICMESH_REALM"])
    seed = await NodeProcess.spawn("seed", realm=realm, extra=["--http", "127.0.0.1:0"])
    env = _pod_env("quicmesh-2", tmp_path, seed.address, "unused:4433")
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", _start_script(), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "listening on" in line and f"realm {env['QUICMESH_REALM']}" in line, line
        peers = await seed.wait_peers(1, timeout=30)
        assert len(peers) == 1
        assert (tmp_path / "node.key").exists(), "the node keeps its key on the data volume"
        print(f"pod quicmesh-2's start script: node joined the seed ({line.split()[2][:12]}...)")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await seed.stop()
    assert proc.returncode == 0, (await proc.stderr.read()).decode() if proc.stderr else ""
