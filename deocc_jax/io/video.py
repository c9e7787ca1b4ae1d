"""Video files and cameras in and out, keeping timing and audio.

Reading:
  * files are decoded with PyAV (FFmpeg): every frame comes with its own
    presentation time, so variable-frame-rate sources keep their timing, and a
    file that ends early is noticed (`VideoReader.truncation`);
    phone videos are turned upright by their rotation metadata.
  * cameras go through OpenCV, read by a background thread with timeouts: a
    camera index that does not exist, a camera that is busy and one that stops
    delivering frames each raise a `CameraError` with a one-line message
    instead of hanging. The reader keeps only the newest frame (a camera never
    waits for its consumer), so a slow consumer sees fresh frames, not a queue.

Writing (`VideoWriter`): H.264 (libx264, from PyAV's wheel) at the source's
frame rate and, when given, the source's own timestamps; the audio tracks of a
source file can be copied packet for packet (`audio_from=`), so the result stays
in sync and the audio is bit-identical. The file is written under a temporary
name and renamed into place only when complete.

How `infer` keeps audio (one argument):

    with VideoReader(src) as reader, \\
            VideoWriter(out, reader.info.fps, w, h, audio_from=src,
                        time_base=reader.info.time_base) as writer:
        for frame in reader.timed_frames():
            writer.write(process(frame.rgb), time_s=frame.time_s)
    if reader.truncation: log(reader.truncation)

`write(rgb)` without a time writes a file at a constant `fps`.

Over 500 lines on purpose: file and camera readers and the writer share one timing model
(frame times, time bases, audio passed through packet for packet), read together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import glob
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.io import atomic

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
# Containers VideoWriter can put H.264 (and copied audio) in.
WRITABLE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
# A camera that does not report its rate is written at this rate.
DEFAULT_CAMERA_FPS = 30.0
# Camera timeouts (seconds): opening, the first frame (a camera used by another
# program often opens but never delivers), and any later gap between frames.
CAMERA_OPEN_TIMEOUT_S = 10.0
CAMERA_FIRST_FRAME_TIMEOUT_S = 5.0
CAMERA_FRAME_TIMEOUT_S = 2.0
# H.264 quality: crf 18 is visually lossless for most content; "veryfast" keeps
# encoding a 640x480 frame to a few milliseconds.
H264_CRF = 18
H264_PRESET = "veryfast"


class CameraError(errors.UserError, IOError):
    """A camera could not be opened or stopped delivering frames."""


class CameraNotFoundError(CameraError, errors.InputNotFoundError):
    """No camera has the requested index."""


class CameraBusyError(CameraError):
    """The camera exists but delivers no frame (usually: another program uses it)."""


class CameraStalledError(CameraError):
    """The camera delivered frames, then none for longer than the timeout."""


def is_camera(spec: str) -> bool:
    """Whether an --input value names a camera index ("0", "1", ...)."""
    return spec.isdigit()


def is_video_path(path: str) -> bool:
    """Whether a path has a video file extension."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a writer needs to reproduce a source's timing and size.

    Attributes:
      fps: average frame rate (the camera's reported rate for cameras).
      width, height: frame size in pixels, upright (after rotation metadata).
      frame_count: frames the file declares (its header, else duration x fps);
        None for cameras (unbounded).
      time_base: the file's video time base (timestamps are multiples of it);
        None for cameras.
      duration_s: the video stream's duration; None when unknown or a camera.
      audio_streams: number of audio tracks in the file.
    """
    fps: float
    width: int
    height: int
    frame_count: int | None
    time_base: fractions.Fraction | None = None
    duration_s: float | None = None
    audio_streams: int = 0


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
      index: 0, 1, 2... in decoding order (= display order for files).
      time_s: presentation time in seconds: the file's own timestamp, or for a
        camera the capture time since the first frame.
      rgb: uint8 [H, W, 3].
      captured_at: `time.perf_counter()` when the frame was obtained.
      skipped_before: camera frames that arrived since the previous one
        returned and were replaced by this one (the reader keeps the newest).
    """
    index: int
    time_s: float
    rgb: np.ndarray
    captured_at: float
    skipped_before: int = 0


def _av():
    import av  # heavy (FFmpeg libraries): loaded only when a file is read or written
    return av


def _existing_cameras() -> list[str] | None:
    """Video device nodes on Linux; None where cameras are not device files."""
    if not sys.platform.startswith("linux"):
        return None
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


class _CameraThread:
    """Opens an OpenCV camera and reads it continuously on a daemon thread.

    Only the newest frame is kept. All waits have timeouts, because a busy or
    unplugged camera can block `VideoCapture()` or `read()` indefinitely on
    some drivers; such a call is left behind on the daemon thread.
    """

    def __init__(self, index: int, capture_factory: Callable[[int], Any], open_timeout_s: float):
        self.index = index
        self._factory = capture_factory
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_time = 0.0
        self._seq = 0
        self._opened: bool | None = None
        self._read_failed = False
        self._stop = False
        self._cap = None
        self.fps = DEFAULT_CAMERA_FPS
        self.size = (0, 0)
        self._thread = threading.Thread(target=self._run, name=f"camera{index}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._opened is not None, timeout=open_timeout_s)
            opened = self._opened
        if not opened:
            self.close()
            devices = _existing_cameras()
            if opened is None:
                raise CameraBusyError(f"camera {index} did not open within {open_timeout_s:g} s: "
                                      "another program is probably using it (close it and retry)")
            if devices is not None and f"/dev/video{index}" not in devices:
                found = ", ".join(devices) if devices else "none"
                raise CameraNotFoundError(f"camera {index} does not exist (video devices found: {found})")
            raise CameraNotFoundError(f"camera {index} could not be opened: no such camera, or "
                                      "another program is using it")

    def _run(self) -> None:
        try:
            cap = self._factory(self.index)
            ok = bool(cap.isOpened())
        except Exception:  # a driver error is the same, to the user, as no camera
            cap, ok = None, False
        with self._cond:
            self._cap = cap
            if ok:
                fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                if math.isfinite(fps) and fps > 0:
                    self.fps = fps
                self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                             int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            self._opened = ok
            self._cond.notify_all()
        if not ok:
            return
        while not self._stop:
            ok, bgr = cap.read()
            now = time.perf_counter()
            with self._cond:
                if self._stop:
                    break
                if not ok or bgr is None:
                    self._read_failed = True
                    self._cond.notify_all()
                    break
                self._frame, self._frame_time = bgr, now
                self._seq += 1
                self._cond.notify_all()

    def read(self, after_seq: int, timeout_s: float) -> tuple[int, np.ndarray, float]:
        """The newest frame with a sequence number above `after_seq`.

        Returns:
          (seq, BGR frame, perf_counter time it was read).

        Raises:
          CameraBusyError / CameraStalledError: nothing new within `timeout_s`.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or self._read_failed or self._stop,
                                timeout=timeout_s)
            if self._seq > after_seq:
                return self._seq, self._frame, self._frame_time
            first, failed = self._seq == 0, self._read_failed
        what = "the driver returned no frame" if failed else f"none within {timeout_s:g} s"
        if first:
            raise CameraBusyError(
                f"camera {self.index} opened but sent no frame ({what}): another program is "
                "probably using it (close it and retry)")
        raise CameraStalledError(
            f"camera {self.index} stopped delivering frames ({what}): was it unplugged, or "
            "taken by another program?")

    def close(self) -> None:
        """Stops reading and releases the camera."""
        with self._cond:
            self._stop = True
            cap, self._cap = self._cap, None
            self._cond.notify_all()
        # Release from here only once the reader is out of read() (at most a
        # frame period); a read still blocked after that is a hung driver,
        # which only a release can unblock.
        self._thread.join(0.5)
        if cap is not None:
            with contextlib.suppress(Exception):
                cap.release()


class VideoReader:
    """Reads RGB frames from a video file or a camera index; a context manager.

    Args:
      source: a video file path or a camera index as a string ("0").
      camera_open_timeout_s, camera_first_frame_timeout_s, camera_frame_timeout_s:
        how long a camera may take to open, to deliver its first frame, and
        between later frames, before a `CameraError`.
      capture_factory: builds the OpenCV capture for a camera index (tests
        pass fakes); default `cv2.VideoCapture`.

    Raises:
      errors.InputNotFoundError: the file does not exist.
      errors.InvalidInputError: the file is not a decodable video.
      CameraError: the camera does not exist or delivers no frame.
    """

    def __init__(self, source: str, *, camera_open_timeout_s: float = CAMERA_OPEN_TIMEOUT_S,
                 camera_first_frame_timeout_s: float = CAMERA_FIRST_FRAME_TIMEOUT_S,
                 camera_frame_timeout_s: float = CAMERA_FRAME_TIMEOUT_S,
                 capture_factory: Callable[[int], Any] | None = None):
        self.source = source
        self.frames_decoded = 0
        self.decode_error: str | None = None
        self.exhausted = False  # the file's frames were read to the end
        self._container = None
        self._camera: _CameraThread | None = None
        self._first_timeout = camera_first_frame_timeout_s
        self._frame_timeout = camera_frame_timeout_s
        if is_camera(source):
            self._camera = _CameraThread(int(source), capture_factory or cv2.VideoCapture,
                                         camera_open_timeout_s)
            # The first frame gives the real size (some drivers report 0x0).
            try:
                self._seq, bgr, self._pending_t = self._camera.read(0, self._first_timeout)
            except CameraError:
                self._camera.close()
                raise
            self._pending = bgr
            self.info = VideoInfo(fps=self._camera.fps, width=bgr.shape[1], height=bgr.shape[0],
                                  frame_count=None)
            return
        if not os.path.isfile(source):
            raise errors.InputNotFoundError(f"video file {source!r} does not exist")
        av = _av()
        try:
            self._container = av.open(source)
        except av.FFmpegError as e:
            raise errors.InvalidInputError(f"{source}: not a readable video ({e})") from e
        if not self._container.streams.video:
            self.close()
            raise errors.InvalidInputError(f"{source}: has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding: several times faster on H.264
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            self.close()
            raise errors.InvalidInputError(f"{source}: the video does not report a frame rate")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1e6
        count = stream.frames or (int(round(duration * float(rate))) if duration else 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        self._rotation_k = 0
        self._stream = stream
        self.info = VideoInfo(fps=float(rate), width=width, height=height, frame_count=count or None,
                              time_base=stream.time_base, duration_s=duration,
                              audio_streams=len(self._container.streams.audio))
        # Rotation is per-frame side data: peek at the first frame for the
        # upright size; timed_frames() yields it first.
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is not None and self._rotation_k % 2:
            self.info = dataclasses.replace(self.info, width=height, height=width)
        self._first = first

    # ------------------------------------------------------------------ files

    def _decode(self) -> Iterator[tuple[float | None, np.ndarray]]:
        av = _av()
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets, None)
            except av.FFmpegError as e:  # the container itself is cut or damaged
                self.decode_error = str(e)
                packet = None
            if packet is None:
                return
            try:
                # The last (empty) packet flushes the decoder's delayed frames.
                frames = packet.decode()
            except av.FFmpegError as e:
                # One damaged packet loses its frame(s), not the rest of the file;
                # `truncation` reports the shortfall.
                self.decode_error = str(e)
                continue
            for frame in frames:
                rot = getattr(frame, "rotation", 0) or 0
                self._rotation_k = int(round(rot / 90.0)) % 4
                rgb = frame.to_ndarray(format="rgb24")
                if self._rotation_k:
                    # `rotation` is the counter-clockwise angle that makes the
                    # frame upright; np.rot90 turns counter-clockwise too.
                    rgb = np.ascontiguousarray(np.rot90(rgb, self._rotation_k))
                yield frame.time, rgb

    def timed_frames(self) -> Iterator[Frame]:
        """Yields every `Frame` until the source ends (cameras: until closed).

        File times are the file's presentation timestamps, made strictly
        increasing (MediaPipe's VIDEO mode and the muxer require it).
        """
        if self._camera is not None:
            yield from self._camera_frames()
            return
        last = -math.inf
        index = 0
        frames = self._decoded
        pending = self._first
        self._first = None
        while True:
            item = pending if pending is not None else next(frames, None)
            pending = None
            if item is None:
                self.exhausted = True
                return
            t, rgb = item
            if t is None:  # no timestamp in the container (raw streams)
                t = index / self.info.fps
            if t <= last:
                t = last + 1e-3
            last = t
            self.frames_decoded += 1
            yield Frame(index, t, rgb, time.perf_counter())
            index += 1

    def _camera_frames(self) -> Iterator[Frame]:
        start = None
        index = 0
        bgr, seq = self._pending, self._seq
        self._pending = None
        skipped = 0
        while True:
            if bgr is None:
                new_seq, bgr, t = self._camera.read(seq, self._frame_timeout)
                skipped, seq = new_seq - seq - 1, new_seq
            else:
                t = self._pending_t
            start = t if start is None else start
            self.frames_decoded += 1
            yield Frame(index, t - start, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t, skipped)
            bgr = None
            index += 1

    @property
    def truncation(self) -> str | None:
        """One line when fewer frames were decoded than the file declares, else None.

        None too until the frames have been read to the end (a caller that
        stops early has not found the file short).
        """
        if self._camera is not None or not self.exhausted:
            return None
        expected = self.info.frame_count
        # Containers without a frame count give an estimate from the duration:
        # allow one frame of rounding there.
        slack = 0 if self._stream.frames else 1
        if self.decode_error is None and (expected is None or self.frames_decoded >= expected - slack):
            return None
        why = f"decoding error: {self.decode_error}" if self.decode_error else \
            "the file is truncated or damaged"
        return (f"{self.source}: decoded {self.frames_decoded} of {expected} frames ({why}); "
                f"the output has {self.frames_decoded} frames")

    def close(self) -> None:
        """Releases the file or the camera."""
        if self._camera is not None:
            self._camera.close()
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _AudioPassthrough:
    """Copies a file's audio packets into an output container, unchanged.

    Packets are muxed as the video advances (`until`), so the file stays
    interleaved and memory stays bounded.
    """

    def __init__(self, source: str, output):
        av = _av()
        self._input = av.open(source)
        self._map = {s.index: output.add_stream_from_template(s) for s in self._input.streams.audio}
        self._packets = self._input.demux(*self._input.streams.audio) if self._map else iter(())
        self._next = None
        self._output = output
        self.packets = 0

    def until(self, t_s: float) -> None:
        """Muxes every audio packet whose decode time is before `t_s` seconds."""
        while True:
            if self._next is None:
                self._next = next(self._packets, None)
                if self._next is None:
                    return
            p = self._next
            if p.dts is None or p.size == 0:  # demuxer flush packets carry no data
                self._next = None
                continue
            if float(p.dts * p.time_base) >= t_s:
                return
            p.stream = self._map[p.stream.index]
            self._output.mux(p)
            self.packets += 1
            self._next = None

    def close(self) -> None:
        self._input.close()


class VideoWriter:
    """Writes RGB frames as H.264, optionally with a source's audio; a context manager.

    The file appears under `path` only when `close()` succeeds (and only if a
    frame was written); leaving the context through an exception other than
    KeyboardInterrupt removes the partial file. An existing `path` is
    replaced only with `overwrite` (`io.atomic`'s writer policy).

    Args:
      path: output file; the container comes from its extension (.mp4, .m4v,
        .mov, .mkv, .avi).
      fps: the frame rate to record (the source's rate); frames written
        without a time are spaced 1/fps apart.
      width, height: frame size in pixels.
      audio_from: a video file whose audio tracks are copied unchanged.
      time_base: the unit of frame times in the file (pass the source's
        `VideoInfo.time_base` to keep its timestamps exactly); default 1/fps
        for frames without times, else 1/90000.
      crf, preset: libx264 quality and speed.
      overwrite: replace an existing `path` (once the new file is complete).

    Raises:
      errors.InvalidInputError: an extension H.264 cannot be written in.
      errors.OutputExistsError: `path` exists and not `overwrite`.
    """

    def __init__(self, path: str, fps: float, width: int, height: int, *,
                 audio_from: str | None = None, time_base: fractions.Fraction | None = None,
                 crf: int = H264_CRF, preset: str = H264_PRESET, overwrite: bool = False):
        av = _av()
        ext = os.path.splitext(path)[1]
        if ext.lower() not in WRITABLE_EXTENSIONS:
            raise errors.InvalidInputError(
                f"cannot write video {path!r}: use one of {', '.join(WRITABLE_EXTENSIONS)}")
        if fps <= 0 or width <= 0 or height <= 0:
            raise errors.InvalidInputError(f"cannot write video {path!r}: {width}x{height} at {fps} fps")
        atomic.refuse_existing(path, overwrite=overwrite)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise errors.InvalidInputError(f"cannot create the folder of {path!r}: {e.strerror}") from e
        self.path = path
        self.size = (width, height)
        self.fps = fps
        self._overwrite = overwrite
        self._tmp = atomic.temp_sibling(path)
        rate = fractions.Fraction(fps).limit_denominator(1001 * 1000)
        self._rate = rate
        self._time_base = time_base
        try:
            self._out = av.open(self._tmp, "w")
        except (av.FFmpegError, OSError) as e:
            raise errors.InvalidInputError(f"cannot write video {path!r}: {e}") from e
        self._stream = self._out.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width, height
        # 4:2:0 needs even sizes; odd-sized sources are kept at full chroma
        # rather than cropped or padded (fewer players handle 4:4:4).
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        self._audio = None
        try:
            if audio_from is not None:
                self._audio = _AudioPassthrough(audio_from, self._out)
        except Exception:
            self._abort()
            raise
        self._last_pts: int | None = None
        self.frames_written = 0
        self._closed = False

    def write(self, frame_rgb: np.ndarray, time_s: float | None = None) -> None:
        """Encodes one frame.

        Args:
          frame_rgb: uint8 [H, W, 3].
          time_s: presentation time in seconds (a source frame's `time_s`);
            None = the next slot at the writer's frame rate. Times must
            increase from frame to frame.
        """
        av = _av()
        if frame_rgb.shape[1::-1] != self.size or frame_rgb.ndim != 3:
            raise ValueError(f"frame size {frame_rgb.shape[1::-1]} differs from the video's {self.size}")
        if self._time_base is None:
            self._time_base = (1 / self._rate) if time_s is None else fractions.Fraction(1, 90000)
            self._stream.codec_context.time_base = self._time_base
            self._stream.time_base = self._time_base
        if time_s is None:
            pts = 0 if self._last_pts is None else \
                self._last_pts + max(1, int(round(1 / (self._rate * self._time_base))))
        else:
            pts = int(round(time_s / self._time_base))
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"{self.path}: frame time {time_s:.6f} s does not increase "
                             f"(previous {float(self._last_pts * self._time_base):.6f} s)")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb, np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, self._time_base
        if self._audio is not None:
            self._audio.until(float(pts * self._time_base))
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
        except av.FFmpegError as e:
            raise errors.InvalidInputError(f"cannot write video {self.path!r}: {e}") from e
        self._last_pts = pts
        self.frames_written += 1

    def close(self) -> None:
        """Flushes the encoder, copies the remaining audio and renames the file into place.

        A writer that got no frame writes no file (there is no video to keep).
        """
        if self._closed:
            return
        if not self.frames_written:
            self._abort()
            return
        self._closed = True
        try:
            for packet in self._stream.encode():
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.until(math.inf)
                self._audio.close()
            self._out.close()
        except Exception:
            self._discard()
            raise
        try:
            atomic.publish_file(self._tmp, self.path, replace=self._overwrite)
        except errors.OutputExistsError:
            raise errors.OutputExistsError(
                f"{self.path}: appeared while the video was being written; the finished video "
                f"was kept as {self._tmp}") from None

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            os.remove(self._tmp)

    def _abort(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            if self._audio is not None:
                self._audio.close()
        with contextlib.suppress(Exception):
            self._out.close()
        self._discard()

    def abort(self) -> None:
        """Stops without producing the file (the partial file is removed)."""
        if not self._closed:
            self._abort()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()  # a user's Ctrl-C keeps what was written so far
        else:
            self.abort()


def probe(path: str) -> VideoInfo:
    """Frame rate, size and the number of frames actually decodable in a file."""
    with VideoReader(path) as reader:
        n = sum(1 for _ in reader.timed_frames())
        return dataclasses.replace(reader.info, frame_count=n)
