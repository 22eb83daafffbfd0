"""The leak sentinel: notices a node that is slowly leaking or running at a limit.

Theory of operation
-------------------
:class:`LeakSentinel` is sans-IO: time enters as ``now``, RSS through the ``sample_rss``
callable, traffic as an argument. Each :meth:`LeakSentinel.sample` records the process RSS, the
traffic rate and every container group's size, fill and evictions (grouped by name as in
:mod:`.metrics`) in a :class:`~quicmesh.bounded.BoundedDeque` of ``sentinel_window`` samples,
and updates two per-name streaks (rebuilt at every sample, so they hold one entry per live
container name):

* *near capacity*: since when the container's fill has been ``>= near_capacity`` in every
  sample;
* *evicting*: since when its evictions counter has increased between every two samples.

:meth:`LeakSentinel.verdict` says ``degraded`` with one :class:`Reason` per finding:

* ``near_capacity`` / ``evicting``: the streak has lasted ``>= near_capacity_for`` seconds;
* ``rss_growth``: with at least ``sentinel_min_samples`` samples, the least-squares slope of RSS
  over the window exceeds ``rss_slope_limit`` (bytes per minute), the growth is monotone-ish
  (the fitted rise is at least three times the residual noise, the medians of the window's four
  quarters each climb by half to twice the rise the line predicts per quarter, and a line fits
  the window better than any single step: allocator noise and a one-off warm-up jump do not
  count), and traffic did not itself rise by more than
  ``sentinel_traffic_tolerance`` over the window (more load may rightly use more memory).

A drained container breaks its streak at the next sample, and the node recovers to ``ok``.
:class:`SentinelTask` drives a sentinel from asyncio every ``sentinel_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..bounded import BoundedDeque, ContainerRegistry
from ..config import ObservabilityConfig
from .containers import ContainerAggregator
from .process import malloc_trim, process_rss

__all__ = [
    "HISTORY_NAME", "LeakSentinel", "Reason", "SentinelTask", "TrimTask", "Verdict", "least_squares_slope",
    "process_rss",
]

log = logging.getLogger(__name__)

HISTORY_NAME = "observability.sentinel_history"
"""Name of the sentinel's own history container (always ignored by the sentinel's checks)."""

_SEGMENTS = 4
_MIN_SAMPLES_FLOOR = 2 * _SEGMENTS


@dataclass(frozen=True, slots=True)
class Reason:
    """One finding: ``kind`` is ``rss_growth``, ``near_capacity`` or ``evicting``; ``name`` the
    container (or ``process.rss``); ``detail`` a human sentence with the numbers."""

    kind: str
    name: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return {"kind": self.kind, "name": self.name, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The sentinel's judgement: ``status`` is ``"ok"`` or ``"degraded"`` (then ``reasons``
    says why). ``rss_slope`` is in bytes per second (``None`` with fewer than 2 samples)."""

    status: str
    reasons: list[Reason]
    rss_slope: float | None = None
    samples: int = 0

    @property
    def degraded(self) -> bool:
        """``True`` when the status is ``degraded``."""
        return self.status == "degraded"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``sentinel`` section of /health)."""
        return {
            "status": self.status,
            "reasons": [r.to_dict() for r in self.reasons],
            "rss_slope_bytes_per_second": self.rss_slope,
            "samples": self.samples,
        }


@dataclass(frozen=True, slots=True)
class _Point:
    """One container group in one sample."""

    name: str
    size: int
    capacity: int
    fill: float
    evictions: int


@dataclass(frozen=True, slots=True)
class _Sample:
    t: float
    rss: int
    traffic: float | None
    containers: tuple[_Point, ...]


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of the least-squares line through ``(xs, ys)``; ``None`` when undefined."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return None
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return sxy / sxx


def _steady_rise(xs: Sequence[float], ys: Sequence[float], slope: float, segments: int = _SEGMENTS) -> bool:
    """``True`` when ``ys`` rises steadily over ``xs`` rather than by noise or by one jump.

    Three tests: the rise of the fitted line over the window is at least three times the standard
    deviation of the residuals (the growth stands out of the noise), and the medians of
    ``segments`` consecutive slices each exceed the previous one by half to twice the rise the
    line predicts per slice (the growth is spread over the window, not one warm-up step), and
    the line fits better than the best single step (a jump, however noisy, is not a leak).
    """
    n = len(ys)
    if n < 2 * segments or slope <= 0:
        return False
    mx = sum(xs) / n
    my = sum(ys) / n
    residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    sigma = math.sqrt(sum(r * r for r in residuals) / (n - 2))
    rise = slope * (xs[-1] - xs[0])
    if rise < 3 * sigma:
        return False
    medians = [statistics.median(ys[i * n // segments : (i + 1) * n // segments]) for i in range(segments)]
    expected = rise / segments
    if not all(expected / 2 <= b - a <= expected * 2 for a, b in itertools.pairwise(medians)):
        return False
    return sum(r * r for r in residuals) < _best_step_sse(ys)


def _best_step_sse(ys: Sequence[float]) -> float:
    """Smallest sum of squared errors of a two-level step fitted to ``ys`` (best split point)."""
    n = len(ys)
    total = sum(ys)
    total_sq = sum(y * y for y in ys)
    best = math.inf
    left = left_sq = 0.0
    for k in range(1, n):
        y = ys[k - 1]
        left += y
        left_sq += y * y
        right, right_sq = total - left, total_sq - left_sq
        sse = (left_sq - left * left / k) + (right_sq - right * right / (n - k))
        best = min(best, sse)
    return best


class LeakSentinel:
    """Samples a node's RSS and containers and judges whether it is leaking (sans-IO).

    ``registry`` is the node's container registry; the sentinel's own history is registered
    in it too (named :data:`HISTORY_NAME`). ``sample_rss`` returns the RSS in bytes
    (:func:`process_rss` in production, a fake in tests).
    """

    def __init__(
        self,
        config: ObservabilityConfig,
        registry: ContainerRegistry,
        sample_rss: Callable[[], int],
    ) -> None:
        self._config = config
        self._sample_rss = sample_rss
        self._history: BoundedDeque[_Sample] = BoundedDeque(HISTORY_NAME, config.sentinel_window, registry=registry)
        self._aggregator = ContainerAggregator(registry)
        self._ignore = frozenset(config.sentinel_ignore) | {HISTORY_NAME}
        self._min_samples = max(config.sentinel_min_samples, _MIN_SAMPLES_FLOOR)
        self._near_since: dict[str, float] = {}  # bounded: rebuilt every sample, one per container name
        self._evicting_since: dict[str, tuple[float, int]] = {}  # bounded: rebuilt every sample, one per name
        self._last: _Sample | None = None

    @property
    def config(self) -> ObservabilityConfig:
        """The settings this sentinel judges by."""
        return self._config

    @property
    def samples(self) -> int:
        """Samples currently in the window."""
        return len(self._history)

    def sample(self, now: float, traffic: float | None = None) -> None:
        """Record RSS and every container's state at time ``now`` (seconds, monotonic).

        ``traffic`` is the node's current load (e.g. messages per second), used to tell a leak
        from memory that follows load; ``None`` when unknown (taken as steady).
        """
        last = self._last
        if last is not None and now < last.t:
            raise ValueError(f"sentinel time went backwards: {now} < {last.t}")
        rss = int(self._sample_rss())
        by_name: dict[str, _Point] = {}
        for g in self._aggregator.collect():
            if g.name in self._ignore:
                continue
            prev = by_name.get(g.name)
            if prev is None:
                by_name[g.name] = _Point(g.name, g.size, g.capacity, g.fill, g.evictions)
            else:  # same name, another kind: fold together
                by_name[g.name] = _Point(
                    g.name,
                    prev.size + g.size,
                    prev.capacity + g.capacity,
                    max(prev.fill, g.fill),
                    prev.evictions + g.evictions,
                )
        near: dict[str, float] = {}
        evicting: dict[str, tuple[float, int]] = {}
        last_points = {p.name: p for p in last.containers} if last is not None else {}
        for name, point in by_name.items():
            if point.fill >= self._config.near_capacity:
                near[name] = self._near_since.get(name, now)
            before = last_points.get(name)
            if last is not None and before is not None and point.evictions > before.evictions:
                evicting[name] = self._evicting_since.get(name, (last.t, before.evictions))
        self._near_since = near
        self._evicting_since = evicting
        s = _Sample(now, rss, traffic, tuple(by_name[n] for n in sorted(by_name)))
        self._history.append(s)
        self._last = s

    def rss_slope(self) -> float | None:
        """Least-squares slope of RSS over the window, bytes per second."""
        hist = list(self._history)
        return least_squares_slope([s.t for s in hist], [float(s.rss) for s in hist])

    def verdict(self, now: float) -> Verdict:
        """Judge the node at time ``now``: ``ok``, or ``degraded`` with reasons naming what."""
        cfg = self._config
        reasons: list[Reason] = []
        hist = list(self._history)
        slope = least_squares_slope([s.t for s in hist], [float(s.rss) for s in hist])
        if slope is not None and len(hist) >= self._min_samples:
            limit = cfg.rss_slope_limit / 60.0
            ts = [s.t for s in hist]
            rss = [float(s.rss) for s in hist]
            if slope > limit and _steady_rise(ts, rss, slope) and self._traffic_steady(hist):
                span = hist[-1].t - hist[0].t
                reasons.append(
                    Reason(
                        "rss_growth",
                        "process.rss",
                        f"RSS rose {slope * 60 / 1024:.1f} KiB/min over {span:.0f}s ({len(hist)} samples), "
                        f"limit {cfg.rss_slope_limit / 1024:.1f} KiB/min; now {hist[-1].rss / 2**20:.1f} MiB",
                    )
                )
        latest = {p.name: p for p in self._last.containers} if self._last is not None else {}
        for name in sorted(self._near_since):
            since = self._near_since[name]
            if now - since >= cfg.near_capacity_for:
                p = latest[name]
                reasons.append(
                    Reason(
                        "near_capacity",
                        name,
                        f"{name} at {p.fill:.0%} fill ({p.size}/{p.capacity}) for {now - since:.0f}s "
                        f"(threshold {cfg.near_capacity:.0%} for {cfg.near_capacity_for:.0f}s)",
                    )
                )
        for name in sorted(self._evicting_since):
            since, at_start = self._evicting_since[name]
            if now - since >= cfg.near_capacity_for:
                p = latest[name]
                reasons.append(
                    Reason(
                        "evicting",
                        name,
                        f"{name} evicted in every sample for {now - since:.0f}s "
                        f"({p.evictions - at_start} evictions, size {p.size}/{p.capacity})",
                    )
                )
        return Verdict("degraded" if reasons else "ok", reasons, slope, len(hist))

    def _traffic_steady(self, hist: list[_Sample]) -> bool:
        """``False`` when traffic rose by more than the tolerance over the window."""
        points = [(s.t, s.traffic) for s in hist if s.traffic is not None]
        if len(points) < max(2, len(hist) // 2):
            return True  # unknown: judge on RSS alone
        ts = [t for t, _ in points]
        vs = [float(v) for _, v in points if v is not None]
        slope = least_squares_slope(ts, vs)
        if slope is None:
            return True
        mean = sum(vs) / len(vs)
        rise = slope * (ts[-1] - ts[0])
        if mean <= 0:
            return rise <= 0
        return rise <= self._config.sentinel_traffic_tolerance * mean


class _LoopTask:
    """One background task on the running event loop: ``start`` (idempotent), ``stop`` (cancels
    and waits; idempotent), ``running``. Subclasses define ``_run`` and ``_name``."""

    _name = "quicmesh-task"
    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """``True`` while the task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task. Call from the running loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stop the task; idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    async def _run(self) -> None:
        raise NotImplementedError


class SentinelTask(_LoopTask):
    """Samples a :class:`LeakSentinel` every ``interval`` seconds (default: the sentinel's
    ``sentinel_interval``) on the running event loop.

    ``traffic_counter`` returns a cumulative count of the node's work (messages in and out,
    calls...); the task turns it into a rate per second for :meth:`LeakSentinel.sample`.
    A failing sample is logged and the task keeps going. Status changes are logged. It samples at
    once, then every interval.
    """

    _name = "quicmesh-sentinel"

    def __init__(
        self,
        sentinel: LeakSentinel,
        interval: float | None = None,
        *,
        traffic_counter: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval is None:
            interval = sentinel.config.sentinel_interval
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._sentinel = sentinel
        self._interval = interval
        self._traffic_counter = traffic_counter
        self._clock = clock
        self._status = "ok"
        self.errors = 0
        """Samples that raised (logged)."""

    async def _run(self) -> None:
        prev: tuple[float, float] | None = None
        while True:
            now = self._clock()
            traffic: float | None = None
            try:
                if self._traffic_counter is not None:
                    count = float(self._traffic_counter())
                    if prev is not None and now > prev[0]:
                        traffic = max(0.0, (count - prev[1]) / (now - prev[0]))
                    prev = (now, count)
                self._sentinel.sample(now, traffic)
                verdict = self._sentinel.verdict(now)
                if verdict.status != self._status:
                    self._status = verdict.status
                    if verdict.degraded:
                        log.warning(
                            "quicmesh leak sentinel: degraded: %s", "; ".join(r.detail for r in verdict.reasons)
                        )
                    else:
                        log.info("quicmesh leak sentinel: back to ok")
            except Exception:
                self.errors += 1
                log.exception("quicmesh leak sentinel: sample failed")
            await asyncio.sleep(self._interval)


class TrimTask(_LoopTask):
    """Calls ``trim`` (default :func:`~quicmesh.observability.process.malloc_trim`) every
    ``interval`` seconds on the running event loop, counting the calls and the RSS they gave
    back (``sample_rss`` before minus after, when positive). A call that raises is logged and
    the task stops (the C library has no such call). The first trim comes after one interval."""

    _name = "quicmesh-trim"

    def __init__(
        self,
        interval: float,
        *,
        trim: Callable[[], bool] | None = None,
        sample_rss: Callable[[], int] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._interval = interval
        self._trim = trim or malloc_trim
        self._rss = sample_rss or process_rss
        self.trims = 0
        """Calls made."""
        self.released_bytes = 0
        """RSS given back by the calls, summed (bytes)."""

    def trim_now(self) -> int | None:
        """Trim once; returns the RSS given back (bytes), ``None`` when trimming is unsupported."""
        before = self._rss()
        if not self._trim():
            return None
        released = max(0, before - self._rss())
        self.trims += 1
        self.released_bytes += released
        return released

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if self.trim_now() is None:
                    return  # no malloc_trim in this C library
            except Exception:  # memory housekeeping never takes the node down
                log.exception("malloc_trim failed; trimming stops")
                return
