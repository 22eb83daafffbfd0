"""Shared by the simulator scenario tests (split over files so that two test workers run them
side by side)."""

from __future__ import annotations

from quicmesh.testing.scenarios import Report


def assert_bounded(report: Report) -> None:
    """No container of any node went over its capacity, and some were sampled."""
    over = {k: v for k, v in report.containers.items() if v[0] > v[1]}
    assert not over, f"containers over capacity: {over}"
    assert report.containers, "no container was sampled"


def assert_full_delivery(report: Report, subscribers: int) -> None:
    """Every measured subscriber got every message once, in per-publisher order."""
    f = report.figures
    assert f["subscribers_measured"] >= subscribers
    worst = sorted(report.delivery.items(), key=lambda kv: kv[1])[:3]
    assert f["delivery_min"] == 1.0, f"worst subscribers: {worst}"
    assert f["duplicate_deliveries"] == 0
    assert f["order_violations"] == 0
