"""Wall time per named stage of a pipeline (detect, align, model, blend...)."""

from __future__ import annotations

import contextlib
import threading
import time


class StageTimer:
    """Accumulates wall time per named stage (detect, align, model, blend...); thread-safe."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
                self.calls[stage] = self.calls.get(stage, 0) + 1

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        """Milliseconds per frame of each stage over `frames` frames."""
        with self._lock:
            return {k: 1000.0 * v / max(frames, 1) for k, v in self.seconds.items()}

    def per_call_ms(self) -> dict[str, float]:
        """Mean milliseconds of one call of each stage."""
        with self._lock:
            return {k: 1000.0 * v / self.calls[k] for k, v in self.seconds.items()}


class MonotonicMs:
    """Seconds to strictly increasing integer milliseconds.

    MediaPipe's VIDEO mode refuses a timestamp that does not increase, and two frames
    of a variable-rate video (or a camera) can round to the same millisecond.
    """

    def __init__(self):
        self._last = -1

    def __call__(self, time_s: float) -> int:
        self._last = max(int(round(time_s * 1000.0)), self._last + 1)
        return self._last
