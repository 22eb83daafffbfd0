"""Running the node's procedure handlers (:class:`HandlerRunner`, a part of
:class:`~quicmesh.runtime.driver.NodeDriver`).

An ``Invoke`` output of the core starts the handler as a task (tracked in ``_running``, at most
``rpc.max_concurrent_handlers``, cancelled with its peer's connection); its result or error goes
back to the core (``handler_done``) and the reply is written at once when no other handler is
running (nothing else will reply in this loop iteration), else with the others at the end of it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable

from ..bounded import BoundedDict
from ..core.effects import Send
from ..core.node import NodeCore
from ..core.rpc import Invoke
from ..errors import RemoteError
from ..identity import NodeId
from .transport import Transport

__all__ = ["Handler", "HandlerRunner"]

Handler = Callable[[bytes], Awaitable[bytes]]
"""A procedure: ``async def handler(payload: bytes) -> bytes``."""


class HandlerRunner:
    """Starts handler tasks for ``Invoke`` outputs and reports their outcome to the core."""

    core: NodeCore
    transport: Transport
    _handlers: dict[str, Handler]
    _running: BoundedDict[tuple[NodeId, int], asyncio.Task[None]]

    def _run(self, effects: Iterable[object]) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def _invoke(self, eff: Invoke) -> None:
        handler = self._handlers.get(eff.name)
        key = (eff.peer, eff.call_id)
        if handler is None:  # withdrawn while the request was on its way
            refusal = RemoteError("no_handler", eff.name, retryable=True)
            self._run(self.core.handler_done(eff.peer, eff.call_id, None, refusal, self._now()))
            return
        task = asyncio.ensure_future(self._run_handler(handler, eff))
        self._running[key] = task
        task.add_done_callback(functools.partial(self._handler_finished, key))

    def _handler_finished(self, key: tuple[NodeId, int], _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _run_handler(self, handler: Handler, eff: Invoke) -> None:
        result: bytes | None = None
        error: RemoteError | None = None
        try:
            async with asyncio.timeout(eff.timeout):
                out = await handler(eff.payload)
            if not isinstance(out, bytes | bytearray | memoryview):
                error = RemoteError("bad_result", f"handler returned {type(out).__name__}, not bytes")
            else:
                result = bytes(out)
        except RemoteError as exc:
            error = exc
        except TimeoutError:
            error = RemoteError("timeout", f"handler exceeded {eff.timeout:.3f}s")
        except asyncio.CancelledError:
            self._running.pop((eff.peer, eff.call_id), None)
            self.core.handler_done(eff.peer, eff.call_id, None, None, self._now())
            raise
        except Exception as exc:
            error = RemoteError("handler_error", f"{type(exc).__name__}: {exc}"[:1000])
        # the task leaves the table before the core frees its slot (a new request may take it at once)
        self._running.pop((eff.peer, eff.call_id), None)
        effects = self.core.handler_done(eff.peer, eff.call_id, result, error, self._now())
        self._run(effects)
        if not self._running:  # no other handler will reply in this iteration: write the reply now
            self._flush_now(effects)

    def _flush_now(self, effects: Iterable[object]) -> None:
        """Write what ``effects`` sent at once instead of at the next loop iteration."""
        for eff in effects:
            if isinstance(eff, Send):
                flush = getattr(self.transport.get(eff.peer), "flush_now", None)
                if flush is not None:
                    flush()
