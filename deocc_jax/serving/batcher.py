"""A micro-batcher: face crops from concurrent requests share one model call.

Request threads `submit` their crops and block on a future; one model thread
takes what is queued, waits for more, and runs the model once on up to
`max_batch` crops. Model calls are therefore serial (one thread owns the model)
and never run on the event loop.

The wait is for requests known to be coming: a request announces itself when
it starts (`expect`, long before its crops exist: decoding and face finding
come first) and the oldest queued item waits, at most `max_wait_s`, only
while such announced requests have not yet submitted. With nothing announced
the call runs at once, so a lone request never waits; under load, crops of
requests still finding faces join the call instead of each running alone.

One request's failure stays its own: if a batched call raises, every item of
the batch is run again alone, so only the item that fails gets the error.
Items whose future was cancelled (the request timed out) are dropped before
they reach the model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Callable

import numpy as np

# The model: uint8 crops [N, R, R, 3] -> {"deoccluded": [N, ...], "mask": [N, ...]}.
ModelFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass
class BatchStats:
    """What one model call held: crops, distinct requests, and how long the call took."""
    crops: int
    requests: int
    seconds: float


class Expected:
    """A request that may submit crops: the batcher waits for it (`MicroBatcher.expect`).

    Its first `submit` or `close` ends the expectation; use it as a context
    manager so that a request that fails or finds no face stops being waited for.
    """

    def __init__(self, batcher: "MicroBatcher"):
        self._batcher = batcher
        self.open = True

    def submit(self, crops: np.ndarray, owner: object = None) -> list[concurrent.futures.Future]:
        """`MicroBatcher.submit`, ending the expectation in the same step."""
        return self._batcher.submit(crops, owner, expected=self)

    def close(self) -> None:
        self._batcher._settle(self)

    def __enter__(self) -> "Expected":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class _Item:
    crops: np.ndarray
    owner: object
    future: concurrent.futures.Future
    enqueued: float


class MicroBatcher:
    """Groups crops of concurrent requests into model calls of at most `max_batch` crops.

    Args:
      model: the batch function (called only from the batcher's own thread).
      max_batch: the most crops per model call. A request with more faces is
        split into several items by `submit`.
      max_wait_s: how long the oldest queued item may wait for expected
        requests (`expect`) before the call runs with what there is (0: only
        what is already queued). It never waits when none is expected.
      on_batch: called after every model call with its `BatchStats`.
      on_queue: called with the number of crops waiting whenever it changes.
    """

    def __init__(self, model: ModelFn, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[BatchStats], None] = lambda s: None,
                 on_queue: Callable[[int], None] = lambda n: None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._model = model
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_crops = 0
        self._expected = 0  # announced requests that have not submitted or closed yet
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deocc-model", daemon=True)
        self._thread.start()

    def expect(self) -> Expected:
        """Announces a request that may submit crops soon; queued items wait for it.

        Returns:
          an `Expected`: submit through it, or close it (or leave its `with`
          block) if the request will not submit.
        """
        with self._cv:
            self._expected += 1
        return Expected(self)

    def _settle(self, expected: Expected) -> None:
        """Ends `expected` (idempotent; the lock is held or taken) and wakes the model thread."""
        with self._cv:
            if expected.open:
                expected.open = False
                self._expected -= 1
                self._cv.notify()

    def submit(self, crops: np.ndarray, owner: object = None,
               expected: Expected | None = None) -> list[concurrent.futures.Future]:
        """Queues one request's crops; one future per chunk of at most `max_batch` crops.

        Each future's result is the model's output dict for its chunk, in order.

        Args:
          crops: uint8 [N, R, R, 3].
          owner: identifies the request (batch statistics).
          expected: the request's `expect()`, ended here (prefer `Expected.submit`).

        Raises:
          RuntimeError: the batcher is closed.
        """
        futures = []
        with self._cv:
            if expected is not None:
                self._settle(expected)
            if self._closed:
                raise RuntimeError("the model batcher is closed")
            now = time.monotonic()
            for start in range(0, len(crops), self.max_batch):
                chunk = crops[start:start + self.max_batch]
                fut: concurrent.futures.Future = concurrent.futures.Future()
                self._queue.append(_Item(chunk, owner, fut, now))
                self._queued_crops += len(chunk)
                futures.append(fut)
            self._on_queue(self._queued_crops)
            self._cv.notify()
        return futures

    def close(self, timeout: float | None = None) -> None:
        """Runs what is queued, then stops the model thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _take(self) -> list[_Item] | None:
        """The next batch (blocking), or None once closed and drained."""
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued_crops < self.max_batch and self._expected > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, n = [], 0
            while self._queue and (not batch or n + len(self._queue[0].crops) <= self.max_batch):
                item = self._queue.popleft()
                self._queued_crops -= len(item.crops)
                if item.future.set_running_or_notify_cancel():  # False: the request gave up
                    batch.append(item)
                    n += len(item.crops)
            self._on_queue(self._queued_crops)
            return batch

    def _run(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        crops = batch[0].crops if len(batch) == 1 else np.concatenate([i.crops for i in batch])
        try:
            out = self._model(crops)
        except Exception as e:  # noqa: BLE001 - a failure must reach the request, not kill the thread
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            logging.warning("model call on %d crops failed (%s); running its %d items alone",
                            len(crops), e, len(batch))
            for item in batch:
                try:
                    item.future.set_result(self._model(item.crops))
                except Exception as e1:  # noqa: BLE001 - this item's own failure
                    item.future.set_exception(e1)
            return
        self._on_batch(BatchStats(len(crops), len({id(i.owner) for i in batch}),
                                  time.perf_counter() - start))
        offset = 0
        for item in batch:
            k = len(item.crops)
            item.future.set_result({key: np.asarray(v)[offset:offset + k] for key, v in out.items()})
            offset += k

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)
