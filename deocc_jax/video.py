"""Video frame I/O that keeps timing, landmark smoothing, and per-stage timers.

Used by `deocc_jax.infer` for video files and live cameras. Nothing here knows
about the model: frames in, frames out, with the source's frame rate and frame
count preserved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Iterator

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
# Container -> FourCC that the pip OpenCV wheels can always write (no system codecs).
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# A camera that does not report its rate is written at this rate.
DEFAULT_CAMERA_FPS = 30.0


def is_camera(spec: str) -> bool:
    """Whether an --input value names a camera index ("0", "1", ...)."""
    return spec.isdigit()


def is_video_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a writer needs to reproduce a source's timing and size."""
    fps: float
    width: int
    height: int
    frame_count: int | None  # None for cameras (unbounded).


class VideoReader:
    """Reads RGB frames from a video file or a camera index; a context manager.

    Args:
      source: a video file path or a camera index as a string ("0").
    """

    def __init__(self, source: str):
        self.source = source
        if is_camera(source):
            self._cap = cv2.VideoCapture(int(source))
        else:
            if not os.path.isfile(source):
                raise FileNotFoundError(f"video file {source!r} does not exist")
            self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            what = "camera" if is_camera(source) else "video file"
            raise IOError(f"could not open {what} {source!r} (unsupported codec or no device)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0:
            if not is_camera(source):
                raise IOError(f"video file {source!r} does not report a frame rate")
            fps = DEFAULT_CAMERA_FPS
        count = None if is_camera(source) else int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.info = VideoInfo(fps=fps, width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              frame_count=count)

    def frames(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yields (index, timestamp_ms, uint8 RGB frame) until the source ends.

        Timestamps come from the frame index and the source rate, so they are
        strictly increasing (MediaPipe's VIDEO mode requires that) even when a
        container reports none.
        """
        index = 0
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                return
            yield index, int(round(index * 1000.0 / self.info.fps)), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Writes RGB frames at a given rate; a context manager.

    Args:
      path: output file; the container comes from its extension.
      fps: frames per second to record in the file (the source's rate).
      width, height: frame size in pixels.
    """

    def __init__(self, path: str, fps: float, width: int, height: int):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FOURCC:
            raise ValueError(f"cannot write video {path!r}: use one of {sorted(_FOURCC)}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.size = (width, height)
        self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*_FOURCC[ext]), fps, self.size)
        if not self._writer.isOpened():
            raise IOError(f"OpenCV could not open {path!r} for writing ({_FOURCC[ext]} codec)")
        self.frames_written = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        if frame_rgb.shape[1::-1] != self.size:
            raise ValueError(f"frame size {frame_rgb.shape[1::-1]} differs from the video's {self.size}")
        self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        self._writer.release()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(path: str) -> VideoInfo:
    """Frame rate, size and the number of frames actually decodable in a file."""
    with VideoReader(path) as reader:
        n = sum(1 for _ in reader.frames())
        return dataclasses.replace(reader.info, frame_count=n)


class OneEuroFilter:
    """One-euro low-pass filter (Casiez et al., CHI 2012) over a numpy array.

    Smooths strongly when the signal is slow (kills landmark jitter on a still
    face) and lightly when it moves fast (no lag on head turns). Values should
    be pixels; pass the face size as `scale` so that the defaults hold for
    small and large faces alike.

    Args:
      min_cutoff: cutoff frequency (Hz) at zero speed; lower = smoother.
      beta: how fast the cutoff rises with speed; higher = less lag.
      d_cutoff: cutoff (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 1.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x = None
        self._dx = None
        self._t = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filtered value of sample `x` taken at time `t` seconds.

        `scale` divides the speed before it raises the cutoff, so `beta` can be
        given in scale-free units (e.g. face sizes per second).
        """
        x = np.asarray(x, np.float64)
        if self._x is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx) / scale
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


class LandmarkSmoother:
    """Keeps one one-euro filter per tracked face across video frames.

    Faces are matched to the previous frame's by the nearest landmark centre
    (within half a face size); an unmatched face starts a new track, and tracks
    not seen in a frame are dropped.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 1.0):
        self.min_cutoff, self.beta = min_cutoff, beta
        self._tracks: list[tuple[np.ndarray, OneEuroFilter]] = []  # (centre, filter)

    def __call__(self, landmarks: list[np.ndarray], t: float) -> list[np.ndarray]:
        """Smoothed copies of each face's [N, 2] pixel landmarks at time `t` s."""
        out, new_tracks, free = [], [], list(range(len(self._tracks)))
        for lm in landmarks:
            centre = lm.mean(0)
            scale = float(np.ptp(lm, axis=0).max()) or 1.0
            best = min(free, key=lambda i: np.linalg.norm(self._tracks[i][0] - centre), default=None)
            if best is not None and np.linalg.norm(self._tracks[best][0] - centre) < 0.5 * scale:
                free.remove(best)
                filt = self._tracks[best][1]
            else:
                filt = OneEuroFilter(self.min_cutoff, self.beta)
            # Speeds are measured in face sizes per second, so the filter's
            # parameters do not depend on how large the face is in pixels.
            out.append(filt(lm, t, scale).astype(np.float32))
            new_tracks.append((centre, filt))
        self._tracks = new_tracks
        return out


class StageTimer:
    """Accumulates wall time per named stage (detect, align, model, blend...)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: 1000.0 * v / max(frames, 1) for k, v in self.seconds.items()}
