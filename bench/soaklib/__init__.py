"""Soak harness: long-lived node processes under churn, sampled until they prove they hold.

    python bench/soak.py --minutes 2          # the version `make test` runs (tests/test_soak.py)
    python bench/soak.py --minutes 30         # the long run (also `make soak`, QUICMESH_SOAK=1)

``bench/soak.py`` is the command; this package is its code: :mod:`.settings` (limits, TTLs,
options), :mod:`.churn` (churner processes), :mod:`.hubs` (hub processes and sampling),
:mod:`.run` (one run), :mod:`.verdict` (slopes and verdict), :mod:`.report` (files, plots,
summary), :mod:`.stats` (slopes), :mod:`.cli` (arguments).

Theory of operation
-------------------
*Hubs* are long-lived ``quicmesh node --control --http 127.0.0.1:0`` processes advertising
``soak.echo`` (echo) and ``soak.sleep`` (sleep); hub 0 publishes ``soak.news`` at a steady rate
during the first half of the churn, every hub subscribes to ``soak.up.>``, and the hubs after the
first bootstrap to hub 0. Before the baseline is taken the hubs must settle (every container
unchanged over four polls); the baseline of each container is then the largest size seen over one
more TTL (the hubs' own lease refreshes move a few by an entry or two). The first
``--traced`` hubs run tracemalloc (started through the control ``memory`` command); the others are
left untraced, because tracemalloc's own tables are part of RSS: their RSS is what the verdict
judges, the traced hubs give the exact Python-heap slope and the allocation sites that grew.

*Churners* are separate processes (``python bench/soak.py churner ...``), each running
``--concurrency`` session loops. One session is one *churn cycle*: a fresh identity
(``KeyPair.generate()``) starts an in-process ``Node`` that joins the mesh through one hub
(``bootstrap``, round robin), subscribes to ``soak.news`` and to a pattern unique to the session,
waits until it is linked into the ``soak`` topic swarm, publishes to ``soak.up.*``, calls
``soak.echo`` (``call()`` finds the provider itself) and checks the reply, starts a ``soak.sleep`` call and cancels
it mid-flight, closes its subscriptions and stops. Churners run in *rounds* of
``--round-seconds`` driven over JSON lines; at the end of its lifetime (``--churner-rounds``
rounds) a churner is replaced by a fresh process, and every other replacement *crashes*
(``os._exit`` with a call in flight and its connections open), so the hubs also see callers that
die and connections that only the idle timeout ends.

Measurement. Between rounds every session is closed: the harness waits (bounded) until each hub
is back to its pre-churn connection count, then asks each hub for a ``memory`` checkpoint
(``gc.collect()`` and ``malloc_trim(0)`` first, as the node's own trim every
``observability.malloc_trim_interval`` would; the RSS before the trim is recorded and its slope
reported too; then RSS, fds, tasks, live objects, traced bytes). A background sampler
also scrapes ``/metrics`` every ``--sample-seconds`` for the time plots (RSS, fds, tasks, every
container's size). After warm-up (the first ``--warmup`` fraction of the churn time; the tracemalloc
baseline snapshot is taken there) the RSS slope of each untraced hub is the least-squares slope
of checkpoint RSS against the cumulative cycles that hub served, in bytes per cycle.
After churn stops, every container of every hub (``/health``) must return to at most its pre-churn
size, and the process fds and asyncio tasks to theirs, within 2x the longest relevant TTL.

The hubs and churners run with short TTLs (``SOAK_ENV``), so that recovery is quick, and from a
copy of the package taken at the start (``--no-snapshot`` to disable), so that edits to a shared
checkout during a long run cannot mix protocol versions. A failed session is counted by exception
and stage (``TimeoutError@wait_swarm``). The verdict is a JSON field and a printed line, and the
exit status is 1 when it fails.
"""

from __future__ import annotations

from .cli import main
from .hubs import parse_metrics
from .run import run_soak
from .settings import RSS_GATE_MINUTES, RSS_LIMIT, SOAK_ENV, TTL_KEYS, SoakOptions, ttl_bound
from .stats import ls_slope, theil_sen, window_slopes

__all__ = [
    "RSS_GATE_MINUTES",
    "RSS_LIMIT",
    "SOAK_ENV",
    "TTL_KEYS",
    "SoakOptions",
    "ls_slope",
    "main",
    "parse_metrics",
    "run_soak",
    "theil_sen",
    "ttl_bound",
    "window_slopes",
]
