"""Configuration: defaults, construction in code, TOML, environment, overrides, typed errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from quicmesh.config import (
    GossipConfig,
    NodeConfig,
    ObservabilityConfig,
    TransportConfig,
    _coerce,
    load_config,
)
from quicmesh.core.wire import DEFAULT_MAX_FRAME_SIZE
from quicmesh.errors import ConfigError

NO_ENV: dict[str, str] = {}


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(call: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    return info.value


# -- defaults ------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = NodeConfig()
    assert (cfg.listen, cfg.realm, cfg.bootstrap) == ("127.0.0.1:0", "default", ())
    assert cfg.key_path is None and cfg.data_dir is None and cfg.http is None
    assert cfg.transport.max_connections == 1000
    assert cfg.transport.max_frame_size == DEFAULT_MAX_FRAME_SIZE == 1 << 20
    assert cfg.transport.idle_timeout == 30.0 and cfg.transport.keepalive_interval < cfg.transport.idle_timeout
    assert (cfg.membership.active_view, cfg.membership.passive_view) == (5, 30)  # HyParView via iroh-gossip
    assert cfg.gossip.seen_ttl == 90.0 and cfg.gossip.graft_timeout_1 == 0.080
    assert cfg.registry.lease_ttl == 300.0
    assert cfg.gateway.max_clients == 10_000
    assert load_config(env=NO_ENV) == cfg


def test_every_default_is_documented() -> None:
    """Each field has a docstring right after it in the source (what the unit and reason are)."""
    import ast
    import inspect

    import quicmesh.config.schema as module

    tree = ast.parse(inspect.getsource(module))
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = body[i + 1] if i + 1 < len(body) else None
                is_doc = isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                is_section = cls.name == "NodeConfig" and node.target.id in {
                    f.name for f in dataclasses.fields(NodeConfig) if f.default_factory is not dataclasses.MISSING
                }
                if not is_doc and not is_section:
                    undocumented.append(f"{cls.name}.{node.target.id}")
    assert undocumented == []


def test_configs_are_frozen() -> None:
    cfg = NodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.realm = "x"  # type: ignore[misc]


# -- construction in code ------------------------------------------------------------------------


def test_node_config_in_code_converts_bootstrap_list_to_tuple() -> None:
    cfg = NodeConfig(listen="0.0.0.0:7000", realm="prod", bootstrap=["10.0.0.1:7000", "[::1]:7000"])  # type: ignore[arg-type]
    assert cfg.bootstrap == ("10.0.0.1:7000", "[::1]:7000")
    assert isinstance(cfg.bootstrap, tuple)
    assert hash(cfg.bootstrap)
    assert NodeConfig(bootstrap="10.0.0.1:7000").bootstrap == ("10.0.0.1:7000",)  # type: ignore[arg-type]


def test_sections_can_be_given_as_mappings() -> None:
    cfg = NodeConfig(transport={"max_connections": 50})  # type: ignore[arg-type]
    assert cfg.transport == TransportConfig(max_connections=50)
    assert _error(lambda: NodeConfig(transport={"max_conections": 50})).key == "transport.max_conections"  # type: ignore[arg-type]


def test_replace_validates() -> None:
    cfg = NodeConfig().replace(realm="other")
    assert cfg.realm == "other"
    assert _error(lambda: NodeConfig().replace(realm="")).key == "realm"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"realm": 5}, "realm"),
        ({"realm": ""}, "realm"),
        ({"realm": "x" * 65}, "realm"),
        ({"listen": "nohost"}, "listen"),
        ({"listen": "h:99999"}, "listen"),
        ({"bootstrap": ["a:1", "b"]}, "bootstrap[1]"),
        ({"bootstrap": ["a:1", 7]}, "bootstrap[1]"),
        ({"bootstrap": 7}, "bootstrap"),
        ({"key_path": 3}, "key_path"),
        ({"http": "x"}, "http"),
        ({"transport": TransportConfig(max_connections=0)}, "transport.max_connections"),
        ({"transport": TransportConfig(max_connections="10")}, "transport.max_connections"),  # type: ignore[arg-type]
        ({"transport": TransportConfig(max_connections=True)}, "transport.max_connections"),
        ({"transport": TransportConfig(idle_timeout=float("nan"))}, "transport.idle_timeout"),
        ({"transport": TransportConfig(idle_timeout=-1.0)}, "transport.idle_timeout"),
        ({"transport": TransportConfig(keepalive_interval=60.0)}, "transport.keepalive_interval"),
        ({"transport": TransportConfig(max_frame_size=1 << 32)}, "transport.max_frame_size"),
        ({"transport": GossipConfig()}, "transport"),
        ({"observability": ObservabilityConfig(near_capacity=1.5)}, "observability.near_capacity"),
        ({"observability": ObservabilityConfig(malloc_trim_interval=-1.0)}, "observability.malloc_trim_interval"),
    ],
)
def test_bad_values_in_code_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    assert _error(lambda: NodeConfig(**kwargs)).key == key


def test_zero_turns_trimming_off() -> None:
    assert NodeConfig(observability=ObservabilityConfig(malloc_trim_interval=0)).observability.malloc_trim_interval == 0


def test_an_int_is_accepted_for_a_float_field() -> None:
    assert NodeConfig(transport=TransportConfig(idle_timeout=40)).transport.idle_timeout == 40


# -- TOML ----------------------------------------------------------------------------------------


def test_toml_loading(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        """
        realm = "factory-7"
        listen = "0.0.0.0:7000"
        bootstrap = ["10.0.0.1:7000", "10.0.0.2:7000"]
        key_path = "/var/lib/quicmesh/node.key"

        [transport]
        max_connections = 200
        idle_timeout = 45          # an int for a float field
        max_frame_size = 65536

        [pubsub]
        max_message_size = 32768

        [gossip]
        seen_ttl = 120.5
        """,
    )
    cfg = load_config(path, env=NO_ENV)
    assert cfg.realm == "factory-7" and cfg.listen == "0.0.0.0:7000"
    assert cfg.bootstrap == ("10.0.0.1:7000", "10.0.0.2:7000")
    assert cfg.key_path == "/var/lib/quicmesh/node.key"
    assert cfg.transport.max_connections == 200
    assert cfg.transport.idle_timeout == 45.0 and isinstance(cfg.transport.idle_timeout, float)
    assert cfg.gossip.seen_ttl == 120.5
    assert cfg.rpc == NodeConfig().rpc  # untouched sections keep their defaults


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("reaIm = 'typo'", "reaIm"),
        ("[transport]\nmax_conections = 5", "transport.max_conections"),
        ("[transprt]\nmax_connections = 5", "transprt"),
        ("transport = 5", "transport"),
        ("[transport]\nmax_connections = 'many'", "transport.max_connections"),
        ("[transport]\nmax_connections = 2.5", "transport.max_connections"),
        ("[transport]\nmax_connections = true", "transport.max_connections"),
        ("[transport]\nmax_connections = -1", "transport.max_connections"),
        ("[transport]\nidle_timeout = 'soon'", "transport.idle_timeout"),
        ("[transport]\nidle_timeout = nan", "transport.idle_timeout"),
        ("[transport]\nidle_timeout = inf", "transport.idle_timeout"),
        ("realm = 5", "realm"),
        ("bootstrap = [1, 2]", "bootstrap[0]"),
        ("[pubsub]\nsubscriber_overflow = 'stall'", "pubsub.subscriber_overflow"),
        ("[rpc]\nprovider_policy = 'fastest'", "rpc.provider_policy"),
        ("[pubsub]\nmax_message_size = 2000000", "pubsub.max_message_size"),
    ],
)
def test_toml_errors_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = _toml(tmp_path, text)
    err = _error(lambda: load_config(path, env=NO_ENV))
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    assert isinstance(err, ValueError)


def test_toml_bootstrap_string_is_one_address(tmp_path: Path) -> None:
    assert load_config(_toml(tmp_path, "bootstrap = 'a:1'"), env=NO_ENV).bootstrap == ("a:1",)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = _toml(tmp_path, "realm = ")
    assert "invalid TOML" in str(_error(lambda: load_config(bad, env=NO_ENV)))
    missing = tmp_path / "missing.toml"
    assert _error(lambda: load_config(missing, env=NO_ENV)).key == str(missing)


# -- environment and overrides -------------------------------------------------------------------


def test_env_overrides_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "realm = 'from-file'\n[transport]\nmax_connections = 200\nidle_timeout = 40.0\n")
    env = {
        "QUICMESH_REALM": "from-env",
        "QUICMESH_TRANSPORT__MAX_CONNECTIONS": "300",
        "QUICMESH_BOOTSTRAP": "10.0.0.1:7000, 10.0.0.2:7000",
        "QUICMESH_KEY_PATH": "",  # empty means None for an optional field
        "QUICMESH_GOSSIP__SEEN_TTL": "12.5",
        "QUICMESH_SOAK": "1",  # test switches are not configuration
        "HOME": "/root",
    }
    cfg = load_config(path, env=env)
    assert cfg.realm == "from-env"
    assert cfg.transport.max_connections == 300
    assert cfg.transport.idle_timeout == 40.0  # from the file: the env did not touch it
    assert cfg.bootstrap == ("10.0.0.1:7000", "10.0.0.2:7000")
    assert cfg.key_path is None
    assert cfg.gossip.seen_ttl == 12.5


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICMESH_REALM", "from-process-env")
    assert load_config().realm == "from-process-env"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"QUICMESH_TRANSPORT__MAX_CONNECTIONS": "lots"}, "transport.max_connections"),
        ({"QUICMESH_TRANSPORT__MAX_CONNECTIONS": "0"}, "transport.max_connections"),
        ({"QUICMESH_TRANSPORT__MAX_CONECTIONS": "5"}, "transport.max_conections"),
        ({"QUICMESH_REALMS": "x"}, "realms"),
        ({"QUICMESH_GOSSIP__SEEN_TTL": "1e999"}, "gossip.seen_ttl"),
        ({"QUICMESH_BOOTSTRAP": "a:1,b"}, "bootstrap[1]"),
    ],
)
def test_env_errors_name_the_key_and_the_variable(env: dict[str, str], key: str) -> None:
    err = _error(lambda: load_config(env=env))
    assert err.key == key
    assert f"(from {next(iter(env))})" in str(err)


@pytest.mark.parametrize(
    ("typ", "raw", "expected"),
    [
        (bool, True, True),
        (bool, "yes", True),
        (bool, " Off ", False),
        (bool, "1", True),
        (int, "1_000", 1000),
        (int, " 42 ", 42),
        (int, 3.0, 3),
        (float, "2.5", 2.5),
        (float, 2, 2.0),
        (str, "x", "x"),
        (str | None, "", None),
        (str | None, None, None),
        (str | None, "/k", "/k"),
        (int | None, "7", 7),
        (tuple[str, ...], "a, b,,c", ("a", "b", "c")),
        (tuple[str, ...], ["a", "b"], ("a", "b")),
        (tuple[str, ...], "", ()),
        (tuple[int, ...], "1,2", (1, 2)),
    ],
)
def test_coerce_converts_each_supported_type(typ: Any, raw: Any, expected: Any) -> None:
    got = _coerce("k", typ, raw)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("typ", "raw"),
    [
        (bool, "maybe"),
        (bool, 1),
        (int, True),
        (int, 2.5),
        (int, "2.5"),
        (int, float("inf")),
        (int, None),
        (float, True),
        (float, "nan"),
        (float, "x"),
        (str, 5),
        (str, None),
        (str | None, 5),
        (tuple[str, ...], 5),
        (tuple[str, ...], ["a", 1]),
        (tuple[int, ...], "1,x"),
    ],
)
def test_coerce_refuses_with_a_config_error_naming_the_key(typ: Any, raw: Any) -> None:
    err = _error(lambda: _coerce("sec.key", typ, raw))
    assert err.key.startswith("sec.key")
    assert "expected" in err.message


def test_coerce_refuses_unsupported_field_types_loudly() -> None:
    with pytest.raises(TypeError):
        _coerce("k", dict[str, int], {})


def test_overrides_win_and_may_be_dotted(tmp_path: Path) -> None:
    path = _toml(tmp_path, "realm = 'file'\n[transport]\nmax_connections = 200\n")
    cfg = load_config(
        path,
        env={"QUICMESH_REALM": "env", "QUICMESH_TRANSPORT__IDLE_TIMEOUT": "50"},
        overrides={
            "realm": "flag",
            "listen": None,  # None: not given on the command line
            "transport.max_frame_size": 65536,
            "pubsub": {"max_message_size": 1000},
        },
    )
    assert cfg.realm == "flag"
    assert cfg.listen == "127.0.0.1:0"
    assert cfg.transport.max_connections == 200  # file value kept: sections merge
    assert cfg.transport.idle_timeout == 50.0
    assert cfg.transport.max_frame_size == 65536
    assert cfg.pubsub.max_message_size == 1000
    assert _error(lambda: load_config(env=NO_ENV, overrides={"transport.nope": 1})).key == "transport.nope"
