"""Pipeline outputs: a video file, the MJPEG server, a virtual camera.

Each has `send(frame, restored)` (called on the output thread for every output
frame) and `close()`.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from deocc_jax.io import video as video_io
from deocc_jax.streaming.mjpeg import MJPEGServer
from deocc_jax.streaming.virtualcam import VirtualCamera


class FileSink:
    """Writes the restored frames as H.264 at their own timestamps, on an encoder thread.

    Encoding (several ms per 640x480 frame) happens on its own thread, so it
    does not hold back the other outputs. A file played in real time that
    dropped frames is written with the frames that came out, each at its
    source time, so it still plays at the right speed and in sync with the
    source's (copied) audio.

    Args:
      path: output video.
      info: the source's VideoInfo (size, rate, time base).
      audio_from: a source file whose audio tracks are copied unchanged.
      lossless: wait for the encoder rather than skip a frame (files processed
        in full). In real time, a frame that finds a second's worth of frames
        still waiting for the encoder is not recorded, and counted in `dropped`.
      overwrite: replace an existing `path` (`--overwrite`).
    """

    def __init__(self, path: str, info: video_io.VideoInfo, audio_from: str | None = None,
                 lossless: bool = True, overwrite: bool = False):
        self.path = path
        self.lossless = lossless
        self.dropped = 0
        self._writer = video_io.VideoWriter(path, info.fps, info.width, info.height,
                                            audio_from=audio_from, time_base=info.time_base,
                                            overwrite=overwrite)
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, int(round(info.fps))))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, name="live-file", daemon=True)
        self._thread.start()

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def _encode(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._writer.write(*item)
                except BaseException as e:  # noqa: BLE001 (raised again by send / close)
                    self._error = e

    def send(self, frame: video_io.Frame, restored: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        item = (restored, frame.time_s)
        if self.lossless:
            self._queue.put(item)
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def close(self) -> None:
        """Finishes the file (it appears under its name only now)."""
        self._finish()
        if self._error is not None:
            self._writer.abort()
            raise self._error
        self._writer.close()

    def abort(self) -> None:
        """Drops the partial file."""
        self._finish()
        self._writer.abort()


class MJPEGSink:
    """Publishes restored frames to an MJPEGServer (which the caller owns)."""

    def __init__(self, server: MJPEGServer):
        self.server = server

    def send(self, frame: video_io.Frame, restored: np.ndarray) -> None:
        self.server.publish(restored)

    def close(self) -> None:
        self.server.close()


class VirtualCameraSink:
    """Sends restored frames to a VirtualCamera."""

    def __init__(self, camera: VirtualCamera):
        self.camera = camera

    def send(self, frame: video_io.Frame, restored: np.ndarray) -> None:
        self.camera.send(restored)

    def close(self) -> None:
        self.camera.close()
