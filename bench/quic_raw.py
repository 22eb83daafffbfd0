#!/usr/bin/env python3
"""Raw QUIC ceilings of qh3 and aioquic, side by side in one run (no quicmesh code involved).

    python bench/quic_raw.py [--duration 1.0] [--repeat 3] [--json bench/results/quic_raw.json]

Per library: one server process and one client process on loopback, the default asyncio loop,
an ECDSA P-256 certificate (both libraries' defaults accept it). Tests, each over one
bidirectional stream of 4-byte big-endian length-prefixed messages that the receiver parses:

* ``stream_64B`` / ``stream_1024B``: the client writes messages in batches of 64 (one write per
  batch), the server parses them and acknowledges a cumulative count once per received chunk;
  the client keeps at most ``WINDOW_BYTES`` unacknowledged (the stream writers never pause, so the
  sender needs its own window). Result: messages/s received and parsed.
* ``reqrep_1``: one 64 B request in flight, the server echoes it. Result: req/s and p50/p99.
* ``reqrep_64``: 64 requests in flight on the same stream. Result: req/s.
* ``connect_cycle``: what a light client does per task at the least: a new UDP endpoint and
  connection, the handshake, one 64 B request/reply, the close sent (not waiting out the draining
  period, as quicmesh's ``Client.close`` does not). Result: cycles/s, one after another. This is
  the library's ceiling for ``make bench-peers``' light-client cycles (a quicmesh cycle does this
  and more: its identity proof, a subscribe, a publish received, an unsubscribe).

Each test runs ``--duration`` seconds, ``--repeat`` times, the libraries interleaved run by run
(a shared machine's background load hits both alike); the table shows medians and a qh3/aioquic
ratio column. ``measure_ceilings()`` is the entry point for ``bench/two_nodes.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import multiprocessing as mp
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LIBS = ("qh3", "aioquic")
ALPN = "raw-bench"
BATCH = 64
WINDOW_BYTES = 8 * 1024 * 1024
"""Unacknowledged bytes the client keeps in flight: quicmesh's default send buffer
(``transport.send_buffer_bytes``), so both sides of the comparison may have as much in flight (with
2 MiB, qh3 reached 266k msg/s at 64 B instead of 433k)."""
TIME_LIMIT = 110.0  # the whole run stays under two minutes
CONNECT_WARMUP = 5
"""Connect cycles before the measured ones (the first handshakes import and warm the TLS code)."""


def _write_cert(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    cpath, kpath = f"{directory}/cert.pem", f"{directory}/key.pem"
    Path(cpath).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(kpath).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cpath, kpath


def _lib(name: str) -> tuple[Any, Any, Any, Any]:
    aio = importlib.import_module(f"{name}.asyncio")
    proto = importlib.import_module(f"{name}.asyncio.protocol")
    conf = importlib.import_module(f"{name}.quic.configuration")
    events = importlib.import_module(f"{name}.quic.events")
    return aio, proto.QuicConnectionProtocol, conf.QuicConfiguration, events


def _big_buffers(transport: Any) -> None:
    """4 MiB socket buffers (as QuicTransport uses): the default ~208 KiB drops datagrams in a
    2 MiB burst, and loss recovery then dominates the figure instead of the library."""
    import socket

    sock = transport.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


# -- server process ---------------------------------------------------------------------------


def _server_main(lib: str, cert: str, key: str, port_q: Any, stop: Any) -> None:
    asyncio.run(_server(lib, cert, key, port_q, stop))


async def _server(lib: str, cert: str, key: str, port_q: Any, stop: Any) -> None:
    aio, base, qconf, events = _lib(lib)
    stream_data = events.StreamDataReceived

    class Server(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.buf = bytearray()
            self.count = 0

        def quic_event_received(self, event: Any) -> None:
            if not isinstance(event, stream_data):
                return
            buf = self.buf
            buf += event.data
            n = len(buf)
            pos = 0
            replies = []
            count = self.count
            while n - pos >= 4:
                ln = int.from_bytes(buf[pos : pos + 4], "big")
                if n - pos - 4 < ln:
                    break
                body = bytes(buf[pos + 4 : pos + 4 + ln])  # parsed: the body is materialised
                pos += 4 + ln
                if body[:1] == b"Q":
                    replies.append(ln.to_bytes(4, "big") + b"R" + body[1:])
                else:
                    count += 1
            del buf[:pos]
            if count != self.count:
                self.count = count
                replies.append(b"\x00\x00\x00\x09A" + count.to_bytes(8, "big"))
            if replies:
                self._quic.send_stream_data(event.stream_id, b"".join(replies))
            # the base protocol transmits after processing events

    cfg = qconf(is_client=False, alpn_protocols=[ALPN], max_stream_data=8 << 20, max_data=16 << 20)
    cfg.load_cert_chain(cert, key)
    server = await aio.serve("127.0.0.1", 0, configuration=cfg, create_protocol=Server)
    _big_buffers(server._transport)
    port_q.put(server._transport.get_extra_info("sockname")[1])
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stop.wait)
    server.close()


# -- client process ---------------------------------------------------------------------------


def _client_main(lib: str, port: int, duration: float, out_q: Any) -> None:
    try:
        out_q.put(asyncio.run(_client(lib, port, duration)))
    except Exception as exc:  # report instead of hanging the parent
        out_q.put({"error": f"{type(exc).__name__}: {exc}"})


async def _client(lib: str, port: int, duration: float) -> dict[str, float]:
    aio, base, qconf, events = _lib(lib)
    stream_data = events.StreamDataReceived
    loop = asyncio.get_running_loop()

    class Client(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.buf = bytearray()
            self.acked = 0
            self.waiter: asyncio.Future[None] | None = None
            self.replies: dict[int, asyncio.Future[None]] = {}
            self.sid = -1

        def quic_event_received(self, event: Any) -> None:
            if not isinstance(event, stream_data):
                return
            buf = self.buf
            buf += event.data
            n = len(buf)
            pos = 0
            while n - pos >= 4:
                ln = int.from_bytes(buf[pos : pos + 4], "big")
                if n - pos - 4 < ln:
                    break
                kind = buf[pos + 4]
                if kind == 0x41:  # "A": cumulative count
                    self.acked = int.from_bytes(buf[pos + 5 : pos + 13], "big")
                else:
                    rid = int.from_bytes(buf[pos + 5 : pos + 13], "big")
                    fut = self.replies.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                pos += 4 + ln
            del buf[:pos]
            w = self.waiter
            if w is not None and not w.done():
                w.set_result(None)

        def write(self, data: bytes) -> None:
            if self.sid < 0:
                self.sid = self._quic.get_next_available_stream_id()
            self._quic.send_stream_data(self.sid, data)
            self.transmit()

        async def wait(self) -> None:
            self.waiter = loop.create_future()
            await asyncio.wait_for(self.waiter, 10)

    cfg = qconf(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    cfg.max_stream_data = 8 << 20
    cfg.max_data = 16 << 20
    results: dict[str, float] = {}

    for size in (64, 1024):
        async with aio.connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as p:
            _big_buffers(p._transport)
            frame = size.to_bytes(4, "big") + b"D" + bytes(size - 1)
            batch = frame * BATCH
            window = max(BATCH, WINDOW_BYTES // len(frame))
            sent = 0
            t0 = time.perf_counter()
            deadline = t0 + duration
            while time.perf_counter() < deadline:
                while sent - p.acked + BATCH <= window:
                    p.write(batch)
                    sent += BATCH
                await p.wait()
            while p.acked < sent:
                await p.wait()
            results[f"stream_{size}B_msgs_per_s"] = sent / (time.perf_counter() - t0)

    async with aio.connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as p:
        req = (64).to_bytes(4, "big") + b"Q"
        pad = bytes(64 - 9)
        lat: list[float] = []
        rid = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        while time.perf_counter() < deadline:
            rid += 1
            fut = loop.create_future()
            p.replies[rid] = fut
            ts = time.perf_counter()
            p.write(req + rid.to_bytes(8, "big") + pad)
            await asyncio.wait_for(fut, 10)
            lat.append(time.perf_counter() - ts)
        results["reqrep_1_req_per_s"] = len(lat) / (time.perf_counter() - t0)
        lat.sort()
        results["reqrep_1_p50_ms"] = lat[len(lat) // 2] * 1000
        results["reqrep_1_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000

        done = 0
        in_flight: set[asyncio.Future[None]] = set()
        t0 = time.perf_counter()
        deadline = t0 + duration

        def launch() -> None:
            nonlocal rid
            rid += 1
            fut = loop.create_future()
            p.replies[rid] = fut
            in_flight.add(fut)
            p._quic.send_stream_data(p.sid, req + rid.to_bytes(8, "big") + pad)

        for _ in range(64):
            launch()
        p.transmit()
        while in_flight:
            finished, _ = await asyncio.wait(in_flight, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if not finished:
                raise TimeoutError("no reply within 10 s")
            in_flight -= finished
            done += len(finished)
            if time.perf_counter() < deadline:
                for _ in finished:
                    launch()
                p.transmit()
        results["reqrep_64_req_per_s"] = done / (time.perf_counter() - t0)

    results.update(await _connect_cycles(lib, Client, cfg, port, duration))
    return results


async def _connect_cycles(lib: str, protocol: Any, cfg: Any, port: int, duration: float) -> dict[str, float]:
    """``connect_cycle``: new endpoint, handshake, one request/reply, close sent; one at a time."""
    loop = asyncio.get_running_loop()
    connection = importlib.import_module(f"{lib}.quic.connection").QuicConnection
    req = (64).to_bytes(4, "big") + b"Q"
    pad = bytes(64 - 9)

    async def cycle(rid: int) -> None:
        transport, p = await loop.create_datagram_endpoint(
            lambda: protocol(connection(configuration=cfg)), local_addr=("127.0.0.1", 0))
        try:
            p.connect(("127.0.0.1", port))
            await asyncio.wait_for(p.wait_connected(), 10)
            fut = loop.create_future()
            p.replies[rid] = fut
            p.write(req + rid.to_bytes(8, "big") + pad)
            await asyncio.wait_for(fut, 10)
        finally:
            p.close()  # the close is sent at once; the draining period is not waited out
            transport.close()

    for rid in range(CONNECT_WARMUP):
        await cycle(rid)
    lat: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        ts = time.perf_counter()
        await cycle(len(lat))
        lat.append(time.perf_counter() - ts)
    lat.sort()
    return {"connect_cycle_per_s": len(lat) / (time.perf_counter() - t0),
            "connect_cycle_p50_ms": lat[len(lat) // 2] * 1000}


# -- orchestration ----------------------------------------------------------------------------


def _run(libs: tuple[str, ...], duration: float, repeat: int, cert: str, key: str) -> dict[str, Any]:
    """One server process per library; client runs interleaved (qh3, aioquic, qh3, ...) so that
    both libraries meet the same background load on a shared machine."""
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    servers: dict[str, tuple[Any, Any, int]] = {}
    runs: dict[str, list[dict[str, float]]] = {lib: [] for lib in libs}
    try:
        for lib in libs:
            port_q, stop = ctx.Queue(), ctx.Event()
            proc = ctx.Process(target=_server_main, args=(lib, cert, key, port_q, stop), daemon=True)
            proc.start()
            servers[lib] = (proc, stop, port_q.get(timeout=30))
        for _ in range(repeat):
            for lib in libs:
                client = ctx.Process(target=_client_main, args=(lib, servers[lib][2], duration, out_q), daemon=True)
                client.start()
                res = out_q.get(timeout=30 + 6 * duration)
                client.join(10)
                if "error" in res:
                    raise RuntimeError(f"{lib} client: {res['error']}")
                runs[lib].append(res)
    finally:
        for proc, stop, _ in servers.values():
            stop.set()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    out: dict[str, Any] = {}
    for lib, rs in runs.items():
        # a ceiling is the best the library did: rates are the best run (qh3's one-stream rate is
        # bimodal here, ~290k or ~560k msg/s at 64 B from one run to the next), latencies medians
        out[lib] = {**{k: (max if k.endswith("_per_s") else statistics.median)(r[k] for r in rs) for k in rs[0]},
                    "runs": rs}
    return out


def measure_ceilings(repeat: int = 3, duration: float = 1.0, libs: tuple[str, ...] = LIBS) -> dict[str, Any]:
    """Raw ceilings per library: ``{"qh3": {"stream_64B_msgs_per_s": ..., ...}, "aioquic": ...}``.

    Keys: ``stream_64B_msgs_per_s``, ``stream_1024B_msgs_per_s``, ``reqrep_1_req_per_s``,
    ``reqrep_1_p50_ms``, ``reqrep_1_p99_ms``, ``reqrep_64_req_per_s``, ``connect_cycle_per_s``,
    ``connect_cycle_p50_ms`` and ``runs``: rates are the
    best of the ``repeat`` runs (a ceiling), latencies the median.
    A library that is not installed is reported as ``{"error": ...}``.
    """
    out: dict[str, Any] = {}
    present = []
    for lib in libs:
        try:
            importlib.import_module(lib)
            present.append(lib)
        except ImportError as exc:
            out[lib] = {"error": str(exc)}
    with tempfile.TemporaryDirectory() as d:
        cert, key = _write_cert(d)
        if present:
            out.update(_run(tuple(present), duration, repeat, cert, key))
    return out


ROWS = (
    ("one stream, 64 B msg/s", "stream_64B_msgs_per_s", "{:,.0f}"),
    ("one stream, 1 KiB msg/s", "stream_1024B_msgs_per_s", "{:,.0f}"),
    ("req/reply 1 in flight, req/s", "reqrep_1_req_per_s", "{:,.0f}"),
    ("req/reply 1 in flight, p50 ms", "reqrep_1_p50_ms", "{:.3f}"),
    ("req/reply 1 in flight, p99 ms", "reqrep_1_p99_ms", "{:.3f}"),
    ("req/reply 64 in flight, req/s", "reqrep_64_req_per_s", "{:,.0f}"),
    ("connect, 1 req/reply, close: cycles/s", "connect_cycle_per_s", "{:,.1f}"),
    ("connect cycle p50 ms", "connect_cycle_p50_ms", "{:.2f}"),
)


def table(res: dict[str, Any]) -> str:
    q, a = res.get("qh3", {}), res.get("aioquic", {})
    rows = [("test", "qh3", "aioquic", "qh3 / aioquic")]
    for label, k, fmt in ROWS:
        vq, va = q.get(k), a.get(k)
        rows.append(
            (
                label,
                fmt.format(vq) if vq is not None else "-",
                fmt.format(va) if va is not None else "-",
                f"{vq / va:.2f}x" if vq and va else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1.0, help="seconds per test")
    p.add_argument("--repeat", type=int, default=3, help="runs per library (medians are shown)")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "quic_raw.json"))
    args = p.parse_args()
    budget = len(LIBS) * args.repeat * (5 * args.duration + 2)
    if budget > TIME_LIMIT:
        p.error(f"--duration x --repeat would take ~{budget:.0f} s; keep it under {TIME_LIMIT:.0f} s")
    started = time.time()
    res = measure_ceilings(repeat=args.repeat, duration=args.duration)
    print(table(res))
    versions = {}
    for lib in LIBS:
        try:
            from importlib.metadata import version

            versions[lib] = version(lib)
        except Exception:
            versions[lib] = "?"
    out = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "loop": "asyncio"},
        "versions": versions,
        "args": vars(args),
        "results": res,
        "seconds": round(time.time() - started, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\n{out['seconds']} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
