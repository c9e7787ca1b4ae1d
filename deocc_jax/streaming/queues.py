"""The hand-off between pipeline threads: one slot, and the newest item wins.

A live pipeline must never build a backlog: when the next stage is still busy
with frame t, frame t+1 replaces whatever older frame was waiting, and the one
it replaces is counted as dropped. Latency is then bounded by the stage times,
whatever the model's speed. For files processed to the end (no frame may be
lost), the same slot blocks the producer instead (`lossless=True`).
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class Closed(Exception):
    """The queue was closed and is empty: the producer has finished."""


class Stopped(Exception):
    """The pipeline is stopping: a waiting `put` or `get` gives up."""


class Slot:
    """A size-1 queue between two threads.

    Args:
      name: used in drop counts ("model busy").
      lossless: `put` waits while the slot is full instead of replacing.
      on_drop: called with each replaced item (to count drops).
      stop: an event that aborts waits (the pipeline's stop signal).
    """

    def __init__(self, name: str, *, lossless: bool = False,
                 on_drop: Callable[[Any], None] | None = None,
                 stop: threading.Event | None = None):
        self.name = name
        self.lossless = lossless
        self._on_drop = on_drop
        self._stop = stop or threading.Event()
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        """Hands `item` over; replaces (and drops) a waiting item unless lossless."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"put() on closed slot {self.name!r}")
            if self.lossless:
                while self._full:
                    if self._stop.is_set():
                        raise Stopped()
                    self._cond.wait(0.1)
            elif self._full:
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop(self._item)
            self._item, self._full = item, True
            self._cond.notify_all()

    def get(self, timeout_s: float | None = None) -> Any:
        """The waiting item.

        Raises:
          Closed: the producer closed the slot and nothing is left.
          Stopped: the stop event was set.
          TimeoutError: nothing arrived within `timeout_s`.
        """
        with self._cond:
            waited = 0.0
            while not self._full:
                if self._closed:
                    raise Closed()
                if self._stop.is_set():
                    raise Stopped()
                if timeout_s is not None and waited >= timeout_s:
                    raise TimeoutError(f"nothing in slot {self.name!r} for {timeout_s} s")
                step = 0.1 if timeout_s is None else min(0.1, timeout_s - waited)
                self._cond.wait(step)
                waited += step
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def discard(self) -> bool:
        """Empties the slot; whether an item was waiting."""
        with self._cond:
            had, self._item, self._full = self._full, None, False
            self._cond.notify_all()
            return had

    def close(self) -> None:
        """No more items will come; `get` raises `Closed` once the slot is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
