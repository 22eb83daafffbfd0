"""deploy/prometheus/quicmesh-rules.yml: valid rules, declared metrics only, alerts that fire.

PyYAML is not a dependency, so the structural check uses a tiny parser for the YAML subset the
rules file is written in (block mappings and sequences, plain and quoted scalars, comments); it
fails loudly on anything else. When ``promtool`` is on PATH (CI installs it; Debian package
``prometheus``), the file is also checked by ``promtool check rules`` and each alert is unit
tested with ``promtool test rules`` on synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from quicmesh.observability import metric_names

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "quicmesh-rules.yml"

EXPECTED_ALERTS = {
    "QuicmeshContainerNearCapacity",
    "QuicmeshContainerRejections",
    "QuicmeshRssGrowing",
    "QuicmeshNodeNotReady",
    "QuicmeshSentinelDegraded",
}


# -- a tiny parser for the YAML subset used by the rules file -----------------------------------------


class YamlSubsetError(ValueError):
    pass


def _strip_comment(line: str) -> str:
    out = []
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def _scalar(text: str, lineno: int) -> Any:
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise YamlSubsetError(f"line {lineno}: unterminated quoted string")
        body = text[1:-1]
        if text[0] == '"':
            return json.loads(text)  # YAML double-quoted strings with simple escapes are JSON strings
        return body.replace("''", "'")
    if text[0] in "[{|>&*!":
        raise YamlSubsetError(f"line {lineno}: unsupported YAML syntax {text[:10]!r}")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def parse_yaml_subset(source: str) -> Any:
    lines: list[tuple[int, str, int]] = []
    for n, raw in enumerate(source.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {n}: tab indentation")
        text = _strip_comment(raw)
        if text.strip():
            lines.append((len(text) - len(text.lstrip(" ")), text.strip(), n))

    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            return sequence(indent)
        return mapping(indent)

    def sequence(indent: int) -> list[Any]:
        nonlocal pos
        items: list[Any] = []
        while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("-"):
            _, text, n = lines[pos]
            rest = text[1:].strip()
            if not rest:
                pos += 1
                items.append(block(lines[pos][0]))
            elif re.match(r"[A-Za-z_][\w.-]*:(\s|$)", rest):
                lines[pos] = (indent + 2, rest, n)  # "- key: v" opens a mapping at indent + 2
                items.append(mapping(indent + 2))
            else:
                items.append(_scalar(rest, n))
                pos += 1
        return items

    def mapping(indent: int) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent:
            _, text, n = lines[pos]
            m = re.match(r"([A-Za-z_][\w.-]*):(\s+(.*))?$", text)
            if not m:
                raise YamlSubsetError(f"line {n}: expected 'key: value', got {text!r}")
            key, value = m.group(1), m.group(3)
            if key in out:
                raise YamlSubsetError(f"line {n}: duplicate key {key!r}")
            pos += 1
            if value is not None and value.strip():
                out[key] = _scalar(value, n)
            elif pos < len(lines) and lines[pos][0] > indent:
                out[key] = block(lines[pos][0])
            else:
                out[key] = None
        if pos < len(lines) and lines[pos][0] > indent:
            raise YamlSubsetError(f"line {lines[pos][2]}: unexpected indentation")
        return out

    if not lines:
        return None
    doc = block(lines[0][0])
    if pos != len(lines):
        raise YamlSubsetError(f"line {lines[pos][2]}: unexpected content")
    return doc


def test_tiny_parser_handles_the_subset_and_refuses_the_rest() -> None:
    doc = parse_yaml_subset("a: 1\nb:\n  - x: 'it''s'\n    y: \"q {{ $v }}\"  # c\n  - plain # c\nc: 0.5\n")
    assert doc == {"a": 1, "b": [{"x": "it's", "y": "q {{ $v }}"}, "plain"], "c": 0.5}
    for bad in ("a: [1, 2]\n", "a: |\n  x\n", "a: 1\na: 2\n", "a:\n    b: 1\n  c: 2\n", "just text\n"):
        with pytest.raises(YamlSubsetError):
            parse_yaml_subset(bad)


# -- structure ---------------------------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    doc = parse_yaml_subset(RULES.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert isinstance(group["name"], str) and group["name"]
        assert isinstance(group["rules"], list) and group["rules"]
        rules.extend(group["rules"])
    return rules


def test_rules_file_structure() -> None:
    rules = load_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert isinstance(r["expr"], str) and r["expr"].strip()
        assert re.fullmatch(r"\d+[smhd]", str(r["for"])), r
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert r["expr"].count("(") == r["expr"].count(")")
        assert r["expr"].count("[") == r["expr"].count("]")


def test_every_metric_in_an_expression_is_declared_in_metrics_py() -> None:
    declared = metric_names()
    used: set[str] = set()
    for r in load_rules():
        names = set(re.findall(r"\bquicmesh_[a-z0-9_]+", r["expr"]))
        assert names, f"{r['alert']} uses no quicmesh metric"
        used |= names
    assert used <= declared, used - declared
    # the thresholds asked for
    by_name = {r["alert"]: r for r in load_rules()}
    assert by_name["QuicmeshContainerNearCapacity"]["for"] == "10m"
    assert "> 0.9" in by_name["QuicmeshContainerNearCapacity"]["expr"]
    assert by_name["QuicmeshContainerRejections"]["for"] == "5m"
    assert "[30m]" in by_name["QuicmeshRssGrowing"]["expr"]


# -- promtool ----------------------------------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)"
)


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def _alert(eval_time: str, name: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": alerts}


@needs_promtool
def test_promtool_alerts_fire_on_leaks_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    q = 'instance="n1",container="gossip.dial_queue",kind="deque"'
    quiet = 'instance="n1",container="gossip.seen_ids",kind="lru_map"'
    near = {
        "exp_labels": {"severity": "warning", "instance": "n1", "container": "gossip.dial_queue", "kind": "deque"},
        "exp_annotations": {
            "summary": "quicmesh container gossip.dial_queue over 90% full on n1",
            "description": "gossip.dial_queue (deque) has been at 95% fill for 10 minutes; it is dropping, "
            "evicting or refusing entries. Raise its limit or find what fills it.",
        },
    }
    rejecting = {
        "exp_labels": {"severity": "warning", "instance": "n1", "container": "gossip.dial_queue", "kind": "deque"},
        "exp_annotations": {
            "summary": "quicmesh container gossip.dial_queue is refusing entries on n1",
            "description": "gossip.dial_queue (deque) refused 1 inserts per second over the last 5 minutes, "
            "for 5 minutes.",
        },
    }
    rss = {
        "exp_labels": {"severity": "warning", "instance": "n1"},
        "exp_annotations": {
            "summary": "quicmesh node n1 RSS keeps growing",
            "description": "Resident memory grew 16.28kiB/s on average over 30 minutes, for 30 minutes: "
            "a possible leak.",
        },
    }
    not_ready = {
        "exp_labels": {"severity": "critical", "instance": "n1"},
        "exp_annotations": {
            "summary": "quicmesh node n1 not ready",
            "description": "The node has reported not ready for 5 minutes; see its /ready and /health.",
        },
    }
    degraded = {
        "exp_labels": {"severity": "warning", "instance": "n1"},
        "exp_annotations": {
            "summary": "quicmesh leak sentinel says n1 is degraded",
            "description": "The node's leak sentinel reports a leak or a structure stuck at its limit; "
            "`quicmesh status --http` or /health names it.",
        },
    }
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"quicmesh_container_fill{{{q}}}", "values": "0.5 0.95x30"},
                    {"series": f"quicmesh_container_fill{{{quiet}}}", "values": "0.5x30"},
                    # 60 refusals a minute from t=0; the quiet one never refuses
                    {"series": f"quicmesh_container_rejections_total{{{q}}}", "values": "0+60x30"},
                    {"series": f"quicmesh_container_rejections_total{{{quiet}}}", "values": "0x30"},
                    {"series": 'quicmesh_node_ready{instance="n1"}', "values": "1 0x30"},
                    {"series": 'quicmesh_node_ready{instance="n2"}', "values": "1x30"},
                    {"series": 'quicmesh_sentinel_degraded{instance="n1"}', "values": "0 1x30"},
                    {"series": 'quicmesh_sentinel_degraded{instance="n2"}', "values": "0x30"},
                ],
                "alert_rule_test": [
                    _alert("10m", "QuicmeshContainerNearCapacity", []),  # 9 minutes over: pending
                    _alert("12m", "QuicmeshContainerNearCapacity", [near]),
                    _alert("4m", "QuicmeshContainerRejections", []),
                    _alert("12m", "QuicmeshContainerRejections", [rejecting]),
                    _alert("5m", "QuicmeshNodeNotReady", []),
                    _alert("7m", "QuicmeshNodeNotReady", [not_ready]),
                    _alert("4m", "QuicmeshSentinelDegraded", []),
                    _alert("7m", "QuicmeshSentinelDegraded", [degraded]),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    # ~1 MB/min of steady growth: 16 KiB/s
                    {
                        "series": 'quicmesh_process_resident_memory_bytes{instance="n1"}',
                        "values": "100000000+1000000x120",
                    },
                    # large but flat, with noise
                    {
                        "series": 'quicmesh_process_resident_memory_bytes{instance="n2"}',
                        "values": " ".join(str(300_000_000 + (i % 7) * 2_000_000) for i in range(121)),
                    },
                ],
                "alert_rule_test": [
                    _alert("29m", "QuicmeshRssGrowing", []),  # growing, but not yet for 30 minutes
                    _alert("35m", "QuicmeshRssGrowing", [rss]),
                    _alert("90m", "QuicmeshRssGrowing", [rss]),
                ],
            },
        ],
    }
    path = tmp_path / "quicmesh-rules-test.yml"
    path.write_text(json.dumps(spec, indent=1), encoding="utf-8")  # JSON is valid YAML
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
