"""Coalescing small writes from many connections into one transaction.

10,000 stream clients acknowledging one push each would be 10,000 transactions; instead
each connection hands its write (an acknowledgement, "handed to the connection", "written")
to the process's Coalescer and awaits the result. The Coalescer gathers what arrives within
a short window (DISPATCH_WRITE_COALESCE_MS) across all connections and applies it with one
flush: a handful of set-based statements in one transaction, whatever the number of clients.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


@dataclass
class Op:
    """One connection's write: `kind` says what, `account_id` whose, `ids` the deliveries;
    the flush sets `result` (or `error`, which the submitter gets raised)."""

    kind: str
    account_id: str
    ids: list[str]
    by_state: dict[str, list[str]] = field(default_factory=dict)
    cursor: int = 0  # a catch-up: the client's resume cursor
    result: Any = None
    error: BaseException | None = None


Flush = Callable[[list[Op]], Awaitable[None]]


class Coalescer:
    def __init__(self, flush: Flush, window_s: float, max_ops: int = 5000):
        self._flush = flush
        self.window_s = window_s
        self.max_ops = max_ops
        self._queue: list[tuple[Op, asyncio.Future | None]] = []
        self._wake = asyncio.Event()
        self._running = False
        self.flushes = 0  # how many transactions it took (for logs and benchmarks)
        self.ops = 0

    async def submit(self, op: Op) -> Any:
        """Queue one write and wait until it is committed (or refused)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if not self._running:  # not started yet, or shutting down: apply at once
            await self._drain()
        else:
            self._wake.set()
        return await fut

    @property
    def pending(self) -> int:
        """Writes queued and not yet applied."""
        return len(self._queue)

    def post(self, op: Op) -> None:
        """Queue one write nobody waits for (a NATS client's acknowledgement): applied with
        the others; if refused, logged."""
        self._queue.append((op, None))
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._running = True
        try:
            while not stop.is_set():
                if not self._queue:
                    self._wake.clear()
                    stop_wait = asyncio.ensure_future(stop.wait())
                    wake_wait = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait((stop_wait, wake_wait), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop_wait.cancel()
                        wake_wait.cancel()
                    continue
                if len(self._queue) < self.max_ops:
                    await asyncio.sleep(self.window_s)  # let the other connections' writes join
                await self._drain()
        finally:
            self._running = False
            await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.max_ops], self._queue[self.max_ops:]
            ops = [op for op, _ in batch]
            try:
                await self._flush(ops)
            except Exception as exc:  # the transaction failed: every write in it is refused
                log.warning("coalesced write of %d ops failed: %s", len(ops), exc)
                for op in ops:
                    op.error = op.error or exc
            self.flushes += 1
            self.ops += len(ops)
            for op, fut in batch:
                if fut is None:
                    if op.error is not None:
                        log.warning("%s of client %s refused: %s", op.kind, op.account_id, op.error)
                    continue
                if fut.done():
                    continue
                if op.error is not None:
                    fut.set_exception(op.error)
                else:
                    fut.set_result(op.result)
