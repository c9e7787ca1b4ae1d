"""Video I/O: H.264 with the source's timestamps and bit-identical audio, truncation, cameras that fail."""

import fractions
import os
import threading
import time

import av
import cv2
import numpy as np
import pytest

from deocc_jax import errors
from deocc_jax.io import progress, video

RATE = fractions.Fraction(30000, 1001)  # NTSC: a rate that is not an integer


def _make_source(path, frames=40, size=(96, 64), audio=True, faststart=False, rotation=None):
    """A small H.264 (+ AAC tone) file whose frames are numbered by brightness."""
    w, h = size
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as out:
        vs = out.add_stream("libx264", rate=RATE)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            vs.set_display_rotation(rotation)
        if audio:
            aus = out.add_stream("aac", rate=16000)
            aus.layout = "mono"
        for i in range(frames):
            img = np.full((h, w, 3), 20 + 5 * i, np.uint8)
            img[:8, :8] = 255  # a marker in the top-left corner
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, 1 / RATE
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if audio:
            n = int(16000 * frames / RATE)
            tone = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            for s in range(0, n, 1024):
                a = av.AudioFrame.from_ndarray(tone[None, s:s + 1024], format="fltp", layout="mono")
                a.sample_rate, a.pts, a.time_base = 16000, s, fractions.Fraction(1, 16000)
                for p in aus.encode(a):
                    out.mux(p)
            for p in aus.encode():
                out.mux(p)
    return str(path)


def _audio_packets(path):
    with av.open(path) as c:
        return [(p.pts, p.dts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


def _video_times(path):
    with av.open(path) as c:
        return [f.time for f in c.decode(c.streams.video[0])]


def test_h264_copy_keeps_streams_frames_timestamps_and_audio(tmp_path):
    src = _make_source(tmp_path / "src.mp4")
    out = str(tmp_path / "out.mp4")
    with video.VideoReader(src) as reader:
        info = reader.info
        assert (info.width, info.height, info.frame_count, info.audio_streams) == (96, 64, 40, 1)
        assert info.fps == pytest.approx(float(RATE))
        with video.VideoWriter(out, info.fps, info.width, info.height, audio_from=src,
                               time_base=info.time_base) as writer:
            frames = []
            for f in reader.timed_frames():
                frames.append(f.rgb)
                writer.write(255 - f.rgb, time_s=f.time_s)
        assert reader.truncation is None
    with av.open(out) as c, av.open(src) as s:
        assert [st.type for st in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].frames == 40
        assert c.streams.video[0].average_rate == RATE
        assert float(c.streams.video[0].duration * c.streams.video[0].time_base) == pytest.approx(
            float(s.streams.video[0].duration * s.streams.video[0].time_base))
        assert c.duration == pytest.approx(s.duration, abs=1000)  # microseconds
    assert _video_times(out) == pytest.approx(_video_times(src), abs=1e-6)
    src_audio, out_audio = _audio_packets(src), _audio_packets(out)
    assert len(src_audio) > 10 and out_audio == src_audio  # bit-identical, same timestamps
    # The frames written are the processed ones (H.264 at crf 18 is close to lossless).
    got = [f.rgb for f in video.VideoReader(out).timed_frames()]
    assert len(got) == 40
    err = np.abs(np.stack(got).astype(int) - (255 - np.stack(frames).astype(int))).mean()
    assert err < 2.0


def test_writer_without_times_is_constant_rate_and_legacy_api_works(tmp_path):
    out = str(tmp_path / "cfr.mkv")
    with video.VideoWriter(out, 12.5, 64, 48) as w:
        for i in range(10):
            w.write(np.full((48, 64, 3), 10 * i, np.uint8))
    info = video.probe(out)
    assert (info.frame_count, info.width, info.height) == (10, 64, 48)
    assert info.fps == pytest.approx(12.5)
    with video.VideoReader(out) as r:
        stamps = [round(f.time_s * 1000) for f in r.timed_frames()]
    assert stamps == [80 * i for i in range(10)]
    with pytest.raises(ValueError, match="frame size"):
        with video.VideoWriter(str(tmp_path / "x.mp4"), 25, 64, 48) as w:
            w.write(np.zeros((10, 10, 3), np.uint8))


def test_failed_write_leaves_nothing_and_bad_paths_are_one_line_errors(tmp_path):
    out = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with video.VideoWriter(str(out), 25, 64, 48) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []  # neither the output nor a partial file
    video.VideoWriter(str(out), 25, 64, 48).close()
    assert os.listdir(tmp_path) == []  # no frame, no file
    with pytest.raises(errors.InvalidInputError, match="webm"):
        video.VideoWriter(str(tmp_path / "x.webm"), 25, 64, 48)
    with pytest.raises(errors.InputNotFoundError, match="does not exist"):
        video.VideoReader(str(tmp_path / "missing.mp4"))
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(errors.InvalidInputError, match="text.mp4: not a readable video"):
        video.VideoReader(str(tmp_path / "text.mp4"))


def test_truncated_video_reports_frames_decoded_vs_expected(tmp_path):
    src = _make_source(tmp_path / "full.mp4", frames=40, audio=False, faststart=True)
    with av.open(src) as c:  # cut the file in the middle of the 20th frame's data
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size][20]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(open(src, "rb").read()[:pos + 4])
    with video.VideoReader(str(cut)) as r:
        n = sum(1 for _ in r.timed_frames())
        assert 10 < n < 40 and r.frames_decoded == n
        assert r.truncation.startswith(f"{cut}: decoded {n} of 40 frames")
    with video.VideoReader(src) as r:
        assert sum(1 for _ in r.timed_frames()) == 40 and r.truncation is None
    with video.VideoReader(str(cut)) as r:  # stopping early is not a truncation
        next(r.timed_frames())
        assert r.truncation is None


def test_rotation_metadata_is_applied(tmp_path):
    src = _make_source(tmp_path / "rot.mp4", frames=3, audio=False, rotation=90)
    with video.VideoReader(src) as r:
        assert (r.info.width, r.info.height) == (64, 96)
        first = next(r.timed_frames()).rgb
    # 90 degrees counter-clockwise: the top-left marker ends bottom-left.
    assert first.shape == (96, 64, 3)
    assert first[-4, 3].min() > 200 and first[3, 3].max() < 150


class _FakeCapture:
    """An OpenCV capture stand-in: opens or not, delivers n frames, then blocks."""

    def __init__(self, opens=True, frames=0):
        self.opens, self.left = opens, frames
        self.released = threading.Event()

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opens

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 32,
                cv2.CAP_PROP_FRAME_HEIGHT: 24}.get(prop, 0.0)

    def read(self):
        if self.left > 0:
            self.left -= 1
            time.sleep(0.01)
            return True, np.zeros((24, 32, 3), np.uint8)
        self.released.wait(30)  # a driver that hangs until the device is released
        return False, None

    def release(self):
        self.released.set()


def _timed(fn):
    start = time.monotonic()
    try:
        fn()
    finally:
        elapsed = time.monotonic() - start
    return elapsed


def test_camera_that_does_not_exist_is_a_clear_error():
    # A real OpenCV capture on an index no machine has.
    with pytest.raises(video.CameraNotFoundError, match="camera 97 (does not exist|could not be opened)"):
        video.VideoReader("97")
    fake = _FakeCapture(opens=False)
    with pytest.raises(video.CameraNotFoundError):
        video.VideoReader("3", capture_factory=lambda i: fake)
    assert issubclass(video.CameraNotFoundError, errors.UserError)


def test_busy_camera_times_out_instead_of_hanging():
    fake = _FakeCapture(opens=True, frames=0)
    with pytest.raises(video.CameraBusyError, match=r"camera 0 opened but sent no frame \(none within 0.5 s\)"):
        video.VideoReader("0", capture_factory=lambda i: fake, camera_first_frame_timeout_s=0.5)
    assert fake.released.is_set()


def test_camera_that_stops_delivering_frames_is_reported():
    fake = _FakeCapture(opens=True, frames=5)
    got = []
    reader = video.VideoReader("0", capture_factory=lambda i: fake, camera_frame_timeout_s=0.3)
    assert (reader.info.width, reader.info.height) == (32, 24)
    with pytest.raises(video.CameraStalledError, match="camera 0 stopped delivering frames"):
        with reader:
            for f in reader.timed_frames():
                got.append(f)
    assert 1 <= len(got) <= 5
    assert all(b.time_s > a.time_s for a, b in zip(got, got[1:]))
    assert fake.released.is_set()


def test_progress_bar_shows_rate_and_eta_unless_quiet(capsys):
    with progress.bar(total=4, desc="clip.mp4", force=True) as bar:
        for _ in range(4):
            bar.update()
    err = capsys.readouterr().err
    assert "clip.mp4" in err and "4/4" in err and "<" in err  # elapsed<remaining (the ETA)
    with progress.bar(total=4, desc="quiet.mp4", force=True, quiet=True) as bar:
        bar.update(4)
    assert "quiet.mp4" not in capsys.readouterr().err
