"""The tests' one wait helper: returns the first accepted value, fails with what it waited for."""

from __future__ import annotations

import asyncio

import pytest

from quicmesh.testing.wait import WaitTimeout, eventually


async def test_returns_the_first_truthy_value_of_a_plain_check() -> None:
    seen: list[int] = []

    def grow() -> list[int]:
        seen.append(len(seen))
        return seen if len(seen) >= 3 else []

    assert await eventually(grow, interval=0) == [0, 1, 2]


async def test_awaits_an_async_check_and_applies_until() -> None:
    calls = {"n": 0}

    async def probe() -> dict[str, int]:
        calls["n"] += 1
        return {"head": calls["n"]}

    got = await eventually(probe, until=lambda h: h["head"] >= 4, interval=0)
    assert got == {"head": 4}


async def test_timeout_names_the_check_the_last_value_and_the_detail() -> None:
    with pytest.raises(WaitTimeout) as info:
        await eventually(lambda: {"peers": 1}.get("peers", 0) >= 2, timeout=0.05, interval=0.01,
                         detail=lambda: "peers=1")
    text = str(info.value)
    assert "{\"peers\": 1}.get(\"peers\", 0) >= 2" in text  # the source line of the check
    assert "test_wait.py" in text and "last value: False" in text and "detail: 'peers=1'" in text
    assert info.value.polls >= 2 and info.value.last is False
    assert isinstance(info.value, AssertionError)


async def test_timeout_uses_what_when_given() -> None:
    with pytest.raises(WaitTimeout, match=r"heads converge; last value: \{'a': 1\}"):
        await eventually(lambda: {"a": 1}, until=lambda h: h == {"a": 2}, timeout=0.02, what="heads converge")


async def test_a_hanging_async_check_is_cancelled_at_the_deadline() -> None:
    cancelled = asyncio.Event()

    async def hang() -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    with pytest.raises(WaitTimeout, match="no value"):
        await eventually(hang, timeout=0.02)
    assert cancelled.is_set()


async def test_the_checks_own_errors_propagate() -> None:
    def broken() -> bool:
        raise KeyError("gone")

    with pytest.raises(KeyError):
        await eventually(broken, timeout=1)

    async def own_timeout() -> bool:
        raise TimeoutError("the request itself timed out")

    with pytest.raises(TimeoutError, match="request itself"):
        await eventually(own_timeout, timeout=1)


async def test_zero_timeout_polls_once() -> None:
    assert await eventually(lambda: "ready", timeout=0) == "ready"
    with pytest.raises(WaitTimeout, match=r"\(1 polls\)"):
        await eventually(lambda: "", timeout=0)


async def test_rejects_negative_bounds() -> None:
    with pytest.raises(ValueError):
        await eventually(lambda: True, timeout=-1)
