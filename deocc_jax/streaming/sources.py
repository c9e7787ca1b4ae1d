"""Where live frames come from: a camera, or a video file played as if it were one.

A camera delivers frames at its own pace whether or not anyone keeps up; the
reader keeps the newest. `FileSource(realtime=True)` reproduces that with a
file: frame i is released at the wall-clock moment its timestamp says (from
the first frame's release), and a frame whose moment passed more than one
frame period ago is skipped, as a camera's would be. Without `realtime`, a
file is read as fast as the pipeline takes frames, and no frame is skipped.

Every source yields `io.video.Frame`s whose `captured_at` is the moment the
frame left the (real or simulated) camera, and whose `skipped_before` counts
frames skipped just before it; `skipped_after_last` counts those skipped at the
very end.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from deocc_jax.io import video as video_io


class FileSource:
    """A video file, read in full or played in real time.

    Args:
      path: the video file.
      realtime: pace by the timestamps and skip late frames (see the module docstring).
      stop: an event that ends a paced wait early.
    """

    def __init__(self, path: str, realtime: bool = False, stop: threading.Event | None = None):
        self.spec = path
        self.realtime = realtime
        self.is_camera = False
        self._reader = video_io.VideoReader(path)
        self.info = self._reader.info
        self._stop = stop or threading.Event()
        self.skipped = 0
        self.skipped_after_last = 0

    @property
    def truncation(self) -> str | None:
        """See `VideoReader.truncation`."""
        return self._reader.truncation

    def frames(self) -> Iterator[video_io.Frame]:
        if not self.realtime:
            yield from self._reader.timed_frames()
            return
        period = 1.0 / self.info.fps
        start = t0 = None
        pending = 0
        for frame in self._reader.timed_frames():
            if start is None:
                start, t0 = time.perf_counter(), frame.time_s
            due = start + (frame.time_s - t0)
            now = time.perf_counter()
            if now < due:
                if self._stop.wait(due - now):
                    return
            elif now - due > period:
                # Decoding fell behind the clock: this frame's moment has gone.
                pending += 1
                self.skipped += 1
                self.skipped_after_last = pending
                continue
            self.skipped_after_last = 0
            yield video_io.Frame(frame.index, frame.time_s, frame.rgb, due, pending)
            pending = 0

    def close(self) -> None:
        self._reader.close()


class CameraSource:
    """A camera by index (see `VideoReader` for the timeouts and errors).

    Args:
      spec: the camera index as a string ("0").
      **reader_kwargs: passed to `VideoReader` (timeouts, capture_factory).
    """

    def __init__(self, spec: str, **reader_kwargs):
        self.spec = spec
        self.realtime = True
        self.is_camera = True
        self._reader = video_io.VideoReader(spec, **reader_kwargs)
        self.info = self._reader.info
        self.skipped_after_last = 0
        self.truncation = None

    def frames(self) -> Iterator[video_io.Frame]:
        yield from self._reader.timed_frames()

    def close(self) -> None:
        self._reader.close()


def open_source(spec: str, realtime: bool = False, stop: threading.Event | None = None,
                **camera_kwargs):
    """A CameraSource for a camera index ("0"), else a FileSource."""
    if video_io.is_camera(spec):
        return CameraSource(spec, **camera_kwargs)
    return FileSource(spec, realtime=realtime, stop=stop)
