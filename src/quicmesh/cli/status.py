"""``quicmesh status --http HOST:PORT``: a node's /health as readable tables.

:func:`main` fetches ``http://HOST:PORT/health`` with urllib (with a timeout) and prints it with
:func:`render_status`: the node and its status (with the sentinel's reasons when degraded),
peers per view, topics and connections, each subsystem's numbers, and every container with its
size, capacity and fill (a bar and a percentage, highlighted from 90 %). Any failure (connection
refused, timeout, HTTP error, bad JSON) prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["EXIT_ERROR", "StatusError", "fetch_health", "main", "render_status"]

EXIT_ERROR = 2
"""Exit status of :func:`main` when the node cannot be read."""

HIGHLIGHT_FILL = 0.9
"""Fill from which a container is highlighted."""


class StatusError(Exception):
    """The node's /health could not be fetched or understood; the message is one line."""


def _url(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StatusError(f"expected HOST:PORT, got {address!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def fetch_health(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``http://address/health`` and return the decoded document; :class:`StatusError`
    with a one-line reason on any failure."""
    url = _url(address)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(64 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise StatusError(f"cannot reach {address}: {text}") from None
    except TimeoutError:
        raise StatusError(f"cannot reach {address}: timed out after {timeout:g}s") from None
    except OSError as exc:
        raise StatusError(f"cannot reach {address}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatusError(f"{url} returned invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or "status" not in doc:
        raise StatusError(f"{url} returned JSON that is not a quicmesh health document")
    return doc


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_num(v)}" for k, v in value.items()) or "-"
    return str(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"  # pragma: no cover


def _fill_cell(fill: float, width: int = 10) -> Text:
    fill = min(max(fill, 0.0), 1.0)
    filled = round(fill * width)
    style = "bold red" if fill >= HIGHLIGHT_FILL else ("yellow" if fill >= 0.7 else "green")
    return Text("█" * filled + "░" * (width - filled) + f" {fill * 100:5.1f}%", style=style)


_MESH_KEYS = ("topics", "subscriptions", "connections", "handshakes_in_progress", "pending_calls", "clients")


def render_status(health: Mapping[str, Any], console: Console) -> None:
    """Print a /health document (see :func:`~.http.health_document`) as tables on ``console``."""
    status = str(health.get("status", "unknown"))
    node = Table(title="node", show_header=False, title_justify="left")
    node.add_column("key", style="bold")
    node.add_column("value")
    node.add_row("node id", str(health.get("node_id", "-")))
    realm = health.get("realm", "-")
    if isinstance(realm, Mapping):  # {"mode": "open"|"authority", "name", ...}
        realm = f"{realm.get('name', '-')} ({realm.get('mode', '?')})"
    node.add_row("realm", str(realm))
    node.add_row("status", Text(status, style="bold green" if status == "ok" else "bold red"))
    ready = health.get("ready") or {}
    if isinstance(ready, Mapping):
        ok = bool(ready.get("ok"))
        ready_text = f"{'yes' if ok else 'no'} ({ready.get('reason', '')})"
        node.add_row("ready", Text(ready_text, style="green" if ok else "red"))
    process = health.get("process") or {}
    if isinstance(process, Mapping):
        node.add_row("rss", _bytes(process.get("rss_bytes")))
        node.add_row("open fds", _num(process.get("open_fds")))
        node.add_row("asyncio tasks", _num(process.get("asyncio_tasks")))
    sentinel = health.get("sentinel")
    if isinstance(sentinel, Mapping):
        slope = sentinel.get("rss_slope_bytes_per_second")
        slope_text = f"{slope * 60 / 1024:.1f} KiB/min" if isinstance(slope, int | float) else "-"
        node.add_row("rss slope", f"{slope_text} over {_num(sentinel.get('samples'))} samples")
    console.print(node)
    reasons = health.get("reasons") or []
    if reasons:
        console.print(Text("degraded because:", style="bold red"))
        for r in reasons:
            if isinstance(r, Mapping):
                line = f"  - [{r.get('kind', '?')}] {r.get('name', '?')}: {r.get('detail', '')}"
                console.print(Text(line, style="red"))

    gauges = health.get("gauges") or {}
    if isinstance(gauges, Mapping) and gauges:
        mesh = Table(title="peers, topics, connections", show_header=False, title_justify="left")
        mesh.add_column("key", style="bold")
        mesh.add_column("value", justify="right")
        peers = gauges.get("peers") or {}
        if isinstance(peers, Mapping):
            for view, count in peers.items():
                mesh.add_row(f"peers ({view})", _num(count))
        for key in _MESH_KEYS:
            if key in gauges:
                mesh.add_row(key.replace("_", " "), _num(gauges[key]))
        refused = gauges.get("handshakes_refused_total") or {}
        if isinstance(refused, Mapping):
            for reason, count in refused.items():
                mesh.add_row(f"refused ({reason})", _num(count))
        shown = {"peers", "handshakes_refused_total", *_MESH_KEYS}
        for key, value in gauges.items():
            if key not in shown and isinstance(value, int | float):
                mesh.add_row(key.replace("_", " "), _num(value))
        console.print(mesh)

    addresses = health.get("addresses")
    if isinstance(addresses, Mapping):
        _addresses_table(addresses, console)
    relay = health.get("relay")  # #13 (relay)
    if isinstance(relay, Mapping):
        _paths_table(relay, console)
    reserved = {"status", "node_id", "realm", "ready", "reasons", "gauges", "containers", "process", "sentinel",
                "addresses", "relay"}
    sections = [(k, v) for k, v in health.items() if k not in reserved and isinstance(v, Mapping)]
    if sections:
        subs = Table(title="subsystems", title_justify="left")
        subs.add_column("subsystem", style="bold")
        subs.add_column("metric")
        subs.add_column("value", justify="right")
        for name, values in sections:
            first = True
            for key, value in values.items():
                subs.add_row(name if first else "", str(key), _num(value))
                first = False
        console.print(subs)

    containers = health.get("containers") or {}
    if isinstance(containers, Mapping):
        _containers_table(containers, console)


def _addresses_table(addresses: Mapping[str, Any], console: Console) -> None:
    """#13: the announced addresses and what peers report seeing this node at."""
    table = Table(title="addresses (announced; observed by peers)", title_justify="left")
    table.add_column("address", style="bold")
    table.add_column("announced")
    table.add_column("reporters", justify="right")
    table.add_column("confirmed")
    announced = [str(a) for a in addresses.get("announced") or []]
    observed = {str(o.get("address")): o for o in addresses.get("observed") or [] if isinstance(o, Mapping)}
    for addr in dict.fromkeys([*announced, *observed]):
        o = observed.get(addr, {})
        table.add_row(addr, "yes" if addr in announced else "no", _num(o.get("reporters", 0)),
                      "yes" if o.get("confirmed") else "no")
    need = addresses.get("confirmations_needed", "?")
    table.caption = (f"confirmed at {need} peers; reports {_num(addresses.get('reports_received_total'))}, "
                     f"ignored {_num(addresses.get('reports_ignored_total'))}")
    console.print(table)


def _paths_table(relay: Mapping[str, Any], console: Console) -> None:
    """#13: each connected peer's path (``direct`` or ``relayed:<relay>``) and the relays used."""
    table = Table(title="peer paths", title_justify="left")
    table.add_column("peer", style="bold")
    table.add_column("path")
    table.add_column("address")
    table.add_column("datagram", justify="right")  # #14: the largest UDP payload sent now
    for p in relay.get("peers") or []:
        if isinstance(p, Mapping):
            path = str(p.get("path", "?"))
            size = p.get("datagram_size")
            table.add_row(str(p.get("peer", "?"))[:16], path if path == "direct" else f"relayed via {path[8:24]}",
                          str(p.get("address", "")), f"{size:,} B" if isinstance(size, int) else "-")
    table.caption = (f"relay: serving {'yes' if relay.get('serve') else 'no'}, mode {relay.get('mode', '?')}, "
                     f"through {len(relay.get('relays') or [])} relay(s), failovers {_num(relay.get('failovers', 0))}")
    console.print(table)


def _containers_table(containers: Mapping[str, Any], console: Console) -> None:
    # Narrow terminals get a compact table (no kind/peak/bytes, a shorter bar, no side borders)
    # so that names and numbers are never cut.
    wide = console.width >= 120
    table = Table(title=f"containers ({len(containers)})", title_justify="left")
    if not wide:
        table.box = box.SIMPLE_HEAD
        table.pad_edge = False
        table.collapse_padding = True
    table.add_column("container", no_wrap=True)
    if wide:
        table.add_column("kind", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("capacity", justify="right", no_wrap=True)
    else:
        table.add_column("size/capacity", justify="right", no_wrap=True)
    table.add_column("fill", no_wrap=True, min_width=(10 if wide else 4) + 7)
    if wide:
        table.add_column("peak", justify="right", no_wrap=True)
    table.add_column("evictions" if wide else "evict", justify="right", no_wrap=True)
    table.add_column("rejections" if wide else "rej", justify="right", no_wrap=True)
    if wide:
        table.add_column("bytes", justify="right", no_wrap=True)
    for name, c in containers.items():
        if not isinstance(c, Mapping):
            continue
        fill = c.get("fill")
        fill_f = float(fill) if isinstance(fill, int | float) else 0.0
        cells: list[Text | str] = [Text(str(name), style="bold red" if fill_f >= HIGHLIGHT_FILL else "")]
        if wide:
            cells += [str(c.get("kind", "-")), _num(c.get("size")), _num(c.get("capacity"))]
        else:
            cells.append(f"{_num(c.get('size'))}/{_num(c.get('capacity'))}")
        cells.append(_fill_cell(fill_f, 10 if wide else 4))
        if wide:
            cells.append(_num(c.get("peak")))
        cells += [_num(c.get("evictions")), _num(c.get("rejections"))]
        if wide:
            cap_bytes = c.get("capacity_bytes")
            cells.append(f"{_bytes(c.get('bytes'))} / {_bytes(cap_bytes)}" if cap_bytes is not None else "-")
        table.add_row(*cells)
    console.print(table)


def main(
    argv: Sequence[str] | None = None,
    *,
    console: Console | None = None,
    err_console: Console | None = None,
) -> int:
    """``quicmesh status --http HOST:PORT [--timeout SECONDS]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="quicmesh status", description="Show a running node's health.")
    parser.add_argument("--http", required=True, metavar="HOST:PORT", help="the node's HTTP endpoint")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node (default 5)")
    parser.add_argument("--json", action="store_true", help="print the raw /health JSON instead of tables")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out = console or Console()
    err = err_console or Console(stderr=True)
    try:
        health = fetch_health(args.http, timeout=args.timeout)
    except StatusError as exc:
        err.print(f"quicmesh status: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_ERROR
    if args.json:
        out.print_json(data=health)
    else:
        render_status(health, out)
    return 0 if health.get("status") == "ok" else 1
