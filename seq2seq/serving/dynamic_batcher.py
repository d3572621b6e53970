"""Dynamic batching: a queue in front of one translate function, for a server under concurrent load.

Requests that arrive together and share a `key` (their search settings) are joined into one call
of `translate(key, lines)`, up to `max_tokens` source tokens per call, waiting at most `max_wait_s`
after the oldest request for others to join; each request gets back exactly its own results.
While one call runs (on the single worker thread, so the event loop stays free to accept and answer
requests), newcomers queue up and form the next call: under load the batches grow by themselves,
and an idle server answers a lone request after only `max_wait_s`.

A request whose client went away before its call started (its future was cancelled) is dropped
without being translated. A request larger than the budget still goes, alone: the translate
function splits it into batches itself. `max_requests=1` turns batching off (one request per call),
the baseline the load test compares against.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    key: Any  # requests with equal (==) keys may share a call
    lines: list[str]
    tokens: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """`await submit(key, lines, tokens)` -> the results of `translate(key, lines)` for those lines."""

    def __init__(self, translate: Callable[[Any, list[str]], Sequence[Any]], max_tokens: int,
                 max_wait_s: float, max_requests: int = 0):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.translate = translate
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.max_requests = max_requests  # 0 = no limit; 1 = batching off
        self.calls = 0  # translate calls made (for /info and the tests)
        self._pending: list[_Pending] = []
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="translate")
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop taking work; requests still queued are answered with an error (the server is going away)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests
    async def submit(self, key: Any, lines: list[str], tokens: int) -> Sequence[Any]:
        """Queue `lines` (about `tokens` source tokens) and wait for their results.

        Cancelling the awaiting task (a client that disconnected) cancels the request: it is
        skipped if its batch has not started yet.
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(key, lines, tokens, future))
        self._arrival.set()
        return await future

    @property
    def queued(self) -> int:
        return sum(not p.future.done() for p in self._pending)

    def _take(self) -> list[_Pending]:
        """The oldest live request and the compatible ones after it, within the token budget."""
        self._pending = [p for p in self._pending if not p.future.done()]  # drop cancelled requests
        if not self._pending:
            return []
        first = self._pending[0]
        batch, tokens = [first], first.tokens
        for p in self._pending[1:]:
            if self.max_requests and len(batch) >= self.max_requests:
                break
            if p.key == first.key and tokens + p.tokens <= self.max_tokens:
                batch.append(p)
                tokens += p.tokens
        taken = {id(p) for p in batch}
        self._pending = [p for p in self._pending if id(p) not in taken]
        return batch

    def _full(self) -> bool:
        """Whether the oldest request's batch cannot grow any more (so waiting longer is pointless)."""
        live = [p for p in self._pending if not p.future.done()]
        if not live:
            return False
        same = [p for p in live if p.key == live[0].key]
        if self.max_requests and len(same) >= self.max_requests:
            return True
        return sum(p.tokens for p in same) >= self.max_tokens

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not any(not p.future.done() for p in self._pending):
                self._arrival.clear()
                await self._arrival.wait()
                continue
            # Give companions until max_wait after the oldest request's arrival, unless the batch is full.
            oldest = min(p.arrived for p in self._pending if not p.future.done())
            while not self._full():
                remaining = oldest + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            lines = [line for p in batch for line in p.lines]
            self.calls += 1
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.translate, batch[0].key, lines)
                log.debug("search call %d: %d request(s), %d line(s), %d tokens, waited %.1f ms, searched %.1f ms",
                          self.calls, len(batch), len(lines), sum(p.tokens for p in batch),
                          (started - min(p.arrived for p in batch)) * 1000, (time.monotonic() - started) * 1000)
            except Exception as e:  # a failed call answers its own requests, and the server goes on
                log.exception("translation of a batch of %d request(s) failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            k = 0
            for p in batch:
                if not p.future.done():  # its client may have gone away meanwhile
                    p.future.set_result(results[k:k + len(p.lines)])
                k += len(p.lines)
