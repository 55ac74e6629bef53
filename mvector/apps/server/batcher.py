"""Micro-batching: embeddings requested within a few milliseconds of each other go through the
model as one batch, which costs little more than one of them alone.

One collector task runs at a time, so the model is only ever called from one thread; while it
computes a batch, new requests queue up and form the next one.
"""

import asyncio

import numpy as np
from starlette.concurrency import run_in_threadpool


class MicroBatcher:
    """``await embed(waveform)`` → that waveform's embedding, computed together with whatever
    other requests arrive within ``max_wait`` seconds (at most ``max_batch`` per model call).

    ``embed_fn(list of waveforms) -> [N, E]`` runs in a worker thread while holding ``limiter``
    (an asyncio.Semaphore shared with the other CPU-heavy jobs), so the event loop stays free and
    the machine is not oversubscribed. An exception of ``embed_fn`` fails every request of that
    batch with it.
    """

    def __init__(self, embed_fn, max_batch: int = 16, max_wait: float = 0.005, limiter=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.embed_fn = embed_fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.limiter = limiter or asyncio.Semaphore(1)
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._collector: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0
        self.largest_batch = 0

    async def embed(self, waveform) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((waveform, future))
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect())
        return await future

    async def _collect(self) -> None:
        await asyncio.sleep(self.max_wait)  # let requests arriving together join the first batch
        while self._pending:
            batch = [(w, f) for w, f in self._pending[:self.max_batch] if not f.done()]
            del self._pending[:self.max_batch]
            if batch:
                await self._run(batch)

    async def _run(self, batch) -> None:
        try:
            async with self.limiter:
                embeddings = await run_in_threadpool(self.embed_fn, [w for w, _ in batch])
        except Exception as exc:  # the requests' handlers report it; the collector goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for (_, future), embedding in zip(batch, embeddings):
            if not future.done():  # its client may have gone away meanwhile
                future.set_result(embedding)

    def stats(self) -> dict:
        return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest_batch}
