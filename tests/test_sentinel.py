"""The leak sentinel: degraded on a leak, naming what leaks; ok on noise; recovers when drained."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable

import pytest

from quicmesh.bounded import BoundedDeque, ContainerRegistry, LruMap
from quicmesh.config import ObservabilityConfig
from quicmesh.observability import HISTORY_NAME, LeakSentinel, SentinelTask, TrimTask, least_squares_slope
from quicmesh.testing.wait import eventually

MiB = 1024 * 1024
INTERVAL = 5.0

CFG = ObservabilityConfig(
    sentinel_interval=INTERVAL,
    sentinel_window=48,
    sentinel_min_samples=24,
    rss_slope_limit=64 * 1024,  # bytes per minute
    near_capacity=0.9,
    near_capacity_for=60.0,
)


class FakeRss:
    """An RSS source the test steers: a base, a slope (bytes per sample) and seeded noise."""

    def __init__(self, base: int = 100 * MiB, per_sample: int = 0, noise: int = 0, seed: int = 1) -> None:
        self.base = base
        self.per_sample = per_sample
        self.noise = noise
        self.rng = random.Random(seed)
        self.n = 0

    def __call__(self) -> int:
        value = self.base + self.per_sample * self.n + (self.rng.randint(-self.noise, self.noise) if self.noise else 0)
        self.n += 1
        return value


def run(sentinel: LeakSentinel, samples: int, start: float = 0.0, each: Callable[[int], None] | None = None) -> float:
    """Sample ``samples`` times, INTERVAL apart; returns the time of the last sample."""
    t = start
    for i in range(samples):
        if each is not None:
            each(i)
        t = start + i * INTERVAL
        sentinel.sample(t)
    return t


def test_least_squares_slope() -> None:
    assert least_squares_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert least_squares_slope([0, 1, 2], [5, 5, 5]) == pytest.approx(0.0)
    assert least_squares_slope([1], [1]) is None
    assert least_squares_slope([2, 2], [1, 3]) is None


def test_climbing_rss_turns_degraded_naming_rss() -> None:
    # 32 KiB per 5 s sample = 384 KiB/min, well over 64 KiB/min, with allocator noise of ±48 KiB
    reg = ContainerRegistry()
    sentinel = LeakSentinel(CFG, reg, FakeRss(per_sample=32 * 1024, noise=48 * 1024))
    t = run(sentinel, CFG.sentinel_min_samples - 1)
    assert sentinel.verdict(t).status == "ok"  # not enough samples yet: no judgement
    t = run(sentinel, 10, start=t + INTERVAL)
    v = sentinel.verdict(t)
    assert v.status == "degraded"
    assert [(r.kind, r.name) for r in v.reasons] == [("rss_growth", "process.rss")]
    assert "KiB/min" in v.reasons[0].detail
    assert v.rss_slope == pytest.approx(32 * 1024 / INTERVAL, rel=0.2)


def test_steady_noisy_rss_stays_ok() -> None:
    # ±4 MiB of noise around a flat RSS, over several whole windows
    reg = ContainerRegistry()
    sentinel = LeakSentinel(CFG, reg, FakeRss(noise=4 * MiB, seed=7))
    t = 0.0
    for i in range(200):
        t = i * INTERVAL
        sentinel.sample(t)
        assert sentinel.verdict(t).status == "ok", sentinel.verdict(t).reasons
    slope = sentinel.verdict(t).rss_slope
    assert slope is not None and abs(slope) * 60 < 2 * MiB


def test_warm_up_step_is_not_a_leak() -> None:
    # RSS jumps 11 MB once (allocator warm-up), then stays flat: a positive slope over the
    # window, but not monotone growth
    values = [100 * MiB] * 20 + [111 * MiB] * 28
    it = iter(values)
    sentinel = LeakSentinel(CFG, ContainerRegistry(), lambda: next(it))
    t = run(sentinel, len(values))
    v = sentinel.verdict(t)
    assert v.rss_slope is not None and v.rss_slope * 60 > CFG.rss_slope_limit
    assert v.status == "ok"


def _verdicts(gen: Callable[[], int], n: int) -> list[bool]:
    sentinel = LeakSentinel(CFG, ContainerRegistry(), gen)
    out = []
    for i in range(n):
        sentinel.sample(i * INTERVAL)
        out.append(sentinel.verdict(i * INTERVAL).degraded)
    return out


@pytest.mark.parametrize("seed", range(25))
def test_seeded_noise_and_jumps_never_degrade_while_leaks_do(seed: int) -> None:
    # ±4 MiB of noise, over three windows: never degraded at any sample
    assert not any(_verdicts(FakeRss(noise=4 * MiB, seed=seed), 150))
    # an 11 MiB warm-up jump inside ±2 MiB noise, seen sliding through the window: never degraded
    rng = random.Random(seed)
    count = iter(range(10**6))
    assert not any(
        _verdicts(lambda: 100 * MiB + (11 * MiB if next(count) > 60 else 0) + rng.randint(-2 * MiB, 2 * MiB), 150)
    )
    # a 2.4 MiB/min leak inside ±1 MiB noise: degraded once the window is full, and stays so
    leak = _verdicts(FakeRss(per_sample=200 * 1024, noise=1 * MiB, seed=seed), 2 * CFG.sentinel_window)
    assert all(leak[CFG.sentinel_window :])


def test_rss_following_rising_traffic_is_not_a_leak() -> None:
    rss = FakeRss(per_sample=32 * 1024)
    sentinel = LeakSentinel(CFG, ContainerRegistry(), rss)
    t = 0.0
    for i in range(CFG.sentinel_window):
        t = i * INTERVAL
        sentinel.sample(t, traffic=1000.0 + 100.0 * i)  # load grows ~5x over the window
    assert sentinel.verdict(t).status == "ok"
    # the same RSS curve under steady (noisy) load is a leak
    rss2 = FakeRss(per_sample=32 * 1024)
    steady = LeakSentinel(CFG, ContainerRegistry(), rss2)
    rng = random.Random(3)
    for i in range(CFG.sentinel_window):
        t = i * INTERVAL
        steady.sample(t, traffic=1000.0 + rng.uniform(-100, 100))
    assert [r.kind for r in steady.verdict(t).reasons] == ["rss_growth"]


def test_container_stuck_near_capacity_is_named() -> None:
    reg = ContainerRegistry()
    leaky: BoundedDeque[int] = BoundedDeque("gossip.dial_queue", 100, registry=reg)
    healthy: BoundedDeque[int] = BoundedDeque("rpc.pending", 100, registry=reg)
    healthy.append(1)
    sentinel = LeakSentinel(CFG, reg, FakeRss())

    def grow(i: int) -> None:
        # a leaking structure: grows by 10 per sample until it sits near its capacity
        while len(leaky) < min(95, 10 * (i + 1)):
            leaky.append(i)

    t = run(sentinel, 9, each=grow)  # reaches 90 % at sample 8 (t = 40)
    assert sentinel.verdict(t).status == "ok"
    t = run(sentinel, 12, start=t + INTERVAL, each=grow)  # t = 100: 60 s at >= 90 %
    v = sentinel.verdict(t)
    assert v.status == "degraded"
    assert [(r.kind, r.name) for r in v.reasons] == [("near_capacity", "gossip.dial_queue")]
    assert "95/100" in v.reasons[0].detail
    # the verdict is about time: just before the threshold it was still ok
    assert sentinel.verdict(t - 1.0).status == "ok"


def test_container_briefly_full_then_drained_recovers() -> None:
    reg = ContainerRegistry()
    q: BoundedDeque[int] = BoundedDeque("pubsub.subscriber_queue", 10, registry=reg)
    sentinel = LeakSentinel(CFG, reg, FakeRss())
    for i in range(10):
        q.append(i)
    t = run(sentinel, 6)  # full for 25 s: brief
    assert sentinel.verdict(t).status == "ok"
    t = run(sentinel, 10, start=t + INTERVAL)  # full for 75 s: degraded
    assert [r.name for r in sentinel.verdict(t).reasons] == ["pubsub.subscriber_queue"]
    q.drain()
    t += INTERVAL
    sentinel.sample(t)
    assert sentinel.verdict(t).status == "ok"
    # filling up again starts a new streak from zero
    for i in range(10):
        q.append(i)
    t += INTERVAL
    sentinel.sample(t)
    assert sentinel.verdict(t + 30.0).status == "ok"


def test_container_that_keeps_evicting_is_named() -> None:
    # a queue that overflows between drains: never full when sampled, but evicting all the time
    reg = ContainerRegistry()
    q: BoundedDeque[int] = BoundedDeque("gossip.replay_buffer", 10, registry=reg)
    sentinel = LeakSentinel(CFG, reg, FakeRss())

    def overflow(_: int) -> None:
        for i in range(15):
            q.append(i)  # 5 evictions
        for _ in range(5):
            q.popleft()  # back to half full

    t = run(sentinel, 12, each=overflow)  # evicting from t=0 to t=55
    assert sentinel.verdict(t).status == "ok"
    t = run(sentinel, 3, start=t + INTERVAL, each=overflow)
    v = sentinel.verdict(t)
    assert [(r.kind, r.name) for r in v.reasons] == [("evicting", "gossip.replay_buffer")]
    # it stops evicting: one quiet sample ends the streak
    t += INTERVAL
    sentinel.sample(t)
    assert sentinel.verdict(t).status == "ok"


def test_own_history_and_ignored_containers_never_reported() -> None:
    cfg = ObservabilityConfig(
        sentinel_window=8,
        sentinel_min_samples=8,
        near_capacity=0.9,
        near_capacity_for=10.0,
        sentinel_ignore=("membership.recent_ring",),
    )
    reg = ContainerRegistry()
    ring: LruMap[int, int] = LruMap("membership.recent_ring", 4, registry=reg)
    sentinel = LeakSentinel(cfg, reg, FakeRss())
    t = 0.0
    for i in range(40):  # history full and evicting; the ring full and evicting
        ring[i] = i
        t = i * INTERVAL
        sentinel.sample(t)
    assert [st.fill for st in reg.snapshot() if st.name == HISTORY_NAME] == [1.0]
    assert sentinel.verdict(t).status == "ok"
    assert sentinel.samples == 8


def test_time_going_backwards_is_refused() -> None:
    sentinel = LeakSentinel(CFG, ContainerRegistry(), FakeRss())
    sentinel.sample(10.0)
    with pytest.raises(ValueError):
        sentinel.sample(9.0)


async def test_sentinel_task_samples_with_traffic_rate_and_survives_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ContainerRegistry()
    rss = FakeRss()
    fail = {"on": False}

    def sample_rss() -> int:
        if fail["on"]:
            raise OSError("psutil hiccup")
        return rss()

    sentinel = LeakSentinel(CFG, reg, sample_rss)
    counter = {"n": 0.0}
    seen: list[float | None] = []
    orig = sentinel.sample

    def spy(now: float, traffic: float | None = None) -> None:
        seen.append(traffic)
        orig(now, traffic)

    monkeypatch.setattr(sentinel, "sample", spy)
    clock = {"t": 0.0}

    def tick() -> float:
        clock["t"] += 1.0
        counter["n"] += 50.0  # 50 per fake second
        return clock["t"]

    task = SentinelTask(sentinel, 0.001, traffic_counter=lambda: counter["n"], clock=tick)
    task.start()
    assert task.running
    await eventually(lambda: sentinel.samples >= 3)
    assert seen[0] is None  # no rate from a single reading
    assert all(v == pytest.approx(50.0) for v in seen[1:3])
    fail["on"] = True
    await eventually(lambda: task.errors >= 2)
    fail["on"] = False
    n = sentinel.samples
    await eventually(lambda: sentinel.samples > n)
    await task.stop()
    assert not task.running
    await task.stop()  # idempotent


async def test_trim_task_trims_on_its_interval_and_counts_what_it_gave_back() -> None:
    rss = [100_000]
    calls: list[float] = []

    def trim() -> bool:
        calls.append(time.monotonic())
        rss[0] -= 4096  # the allocator gave a page back
        return True

    task = TrimTask(0.02, trim=trim, sample_rss=lambda: rss[0])
    task.start()
    try:
        await eventually(lambda: task.trims >= 3, timeout=5)
    finally:
        await task.stop()
    assert not task.running
    assert task.released_bytes == 4096 * task.trims
    assert all(b - a >= 0.015 for a, b in itertools.pairwise(calls))  # not a busy loop
    with pytest.raises(ValueError):
        TrimTask(0)


async def test_trim_task_stops_where_the_c_library_cannot_trim() -> None:
    task = TrimTask(0.01, trim=lambda: False, sample_rss=lambda: 1)
    assert task.trim_now() is None
    task.start()
    await eventually(lambda: not task.running, timeout=5)
    assert task.trims == 0


def test_malloc_trim_on_this_machine() -> None:
    import platform

    from quicmesh.observability.process import malloc_trim

    assert malloc_trim() is (platform.libc_ver()[0] == "glibc")  # others (musl, macOS) report False
