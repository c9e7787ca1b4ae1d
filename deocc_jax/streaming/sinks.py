"""Pipeline outputs: a video file, the MJPEG server, a virtual camera.

Each has `send(frame, restored)` (called on the output thread for every output
frame) and `close()`.
"""

from __future__ import annotations

import numpy as np

from deocc_jax.io import video as video_io
from deocc_jax.streaming.mjpeg import MJPEGServer
from deocc_jax.streaming.virtualcam import VirtualCamera


class FileSink:
    """Writes the restored frames as H.264 at their own timestamps.

    A file played in real time that dropped frames is written with the frames
    that came out, each at its source time, so it still plays at the right
    speed and in sync with the source's (copied) audio.

    Args:
      path: output video.
      info: the source's VideoInfo (size, rate, time base).
      audio_from: a source file whose audio tracks are copied unchanged.
    """

    def __init__(self, path: str, info: video_io.VideoInfo, audio_from: str | None = None):
        self.path = path
        self._writer = video_io.VideoWriter(path, info.fps, info.width, info.height,
                                            audio_from=audio_from, time_base=info.time_base)

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written

    def send(self, frame: video_io.Frame, restored: np.ndarray) -> None:
        self._writer.write(restored, time_s=frame.time_s)

    def close(self) -> None:
        """Finishes the file (it appears under its name only now)."""
        self._writer.close()

    def abort(self) -> None:
        """Drops the partial file."""
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
