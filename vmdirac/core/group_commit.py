"""Group commit on the IOLoop: items arriving while a batch is being written go together in the
next one, so the DB work per item falls as the rate rises. Each caller is answered only once its
own batch is done (committed), with its own result or exception; state stays in the DB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``serve(items)`` (blocking, run on ``executor``; asyncio's default one when None) returns
    one result or exception per item; if it raises, every item of the batch gets that exception.
    At most ``writers`` batches are in flight, of at most ``max_batch`` items each."""

    def __init__(self, serve: Callable[[list[T]], list[R | Exception]], writers: int, max_batch: int,
                 executor: Executor | None = None) -> None:
        self.serve = serve
        self.writers = writers
        self.max_batch = max_batch
        self.executor = executor
        self.active = 0
        self.pending: list[tuple[T, asyncio.Future]] = []

    async def submit(self, item: T) -> R:
        answer = asyncio.get_running_loop().create_future()
        self.pending.append((item, answer))
        if self.active < self.writers:
            self.active += 1
            asyncio.ensure_future(self._write())
        return await answer

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
                try:
                    results: list = await loop.run_in_executor(self.executor, self.serve, [item for item, _ in batch])
                except Exception as e:  # noqa: BLE001 (the whole batch failed: every caller is told)
                    results = [e] * len(batch)
                for (_, answer), result in zip(batch, results):
                    if answer.done():                  # its caller went away: nothing to tell
                        continue
                    if isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
        finally:
            self.active -= 1
