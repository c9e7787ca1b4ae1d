"""Counts and latencies of a live run: frames in, out and dropped (by where), p50/p95 latency.

Every frame that enters is accounted for: `frames_in = frames_out + dropped`
once the run has ended (while it runs, up to one frame per stage is in flight).
Latency is from capture (the frame leaving the camera or, for a file played in
real time, the moment it was due) to the moment every output has received it.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

from deocc_jax.io import timing

# Recent latencies kept for the running p50/p95 (about 10 s at 30 fps).
RECENT = 300


class LiveStats:
    """Thread-safe counters of one run."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.perf_counter()
        self.frames_in = 0
        self.frames_out = 0
        self.faces = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._latencies: list[float] = []
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT)
        self._first_out: float | None = None
        self._last_out: float | None = None
        # Times one call of a stage ("detect", "model"...); snapshots report the mean.
        self.stage = timing.StageTimer()

    def frame_in(self, n: int = 1) -> None:
        """Counts `n` frames that entered (including ones skipped at the source)."""
        with self._lock:
            self.frames_in += n

    def drop(self, where: str, n: int = 1) -> None:
        """Counts `n` frames dropped at `where` (e.g. "model busy")."""
        with self._lock:
            self.dropped[where] += n

    def frame_out(self, captured_at: float, faces: int) -> None:
        """Counts one output frame, captured at `captured_at` (perf_counter)."""
        now = time.perf_counter()
        with self._lock:
            self.frames_out += 1
            self.faces += faces
            latency = now - captured_at
            self._latencies.append(latency)
            self._recent.append(latency)
            self._first_out = now if self._first_out is None else self._first_out
            self._last_out = now

    def snapshot(self, recent: bool = False) -> dict[str, Any]:
        """Current figures; `recent=True` takes p50/p95 over the last RECENT frames only.

        Returns:
          {"frames_in", "frames_out", "dropped" (total), "dropped_by" {where: n},
           "faces", "elapsed_s", "fps_out", "latency_ms_p50", "latency_ms_p95",
           "latency_ms_max", "stage_ms" {stage: mean ms per call}}.
        """
        with self._lock:
            lat = np.array(self._recent if recent else self._latencies, np.float64) * 1000.0
            elapsed = time.perf_counter() - self.started
            span = (self._last_out - self._first_out) if self._first_out is not None else 0.0
            fps = (self.frames_out - 1) / span if span > 0 else 0.0
            snap = {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "dropped": int(sum(self.dropped.values())),
                "dropped_by": dict(self.dropped),
                "faces": self.faces,
                "elapsed_s": elapsed,
                "fps_out": fps,
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
                "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
                "latency_ms_max": float(lat.max()) if lat.size else None,
                "stage_ms": self.stage.per_call_ms(),
            }
        return snap


def format_line(snap: dict[str, Any]) -> str:
    """One human-readable line of a snapshot."""
    def ms(v):
        return "-" if v is None else f"{v:.0f}"
    drops = ", ".join(f"{k} {v}" for k, v in sorted(snap["dropped_by"].items())) or "none"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in snap["stage_ms"].items())
    return (f"frames in {snap['frames_in']}, out {snap['frames_out']}, dropped {snap['dropped']} "
            f"({drops}); {snap['fps_out']:.1f} frames/s out; latency p50 {ms(snap['latency_ms_p50'])} ms, "
            f"p95 {ms(snap['latency_ms_p95'])} ms" + (f"; ms per call: {stages}" if stages else ""))
