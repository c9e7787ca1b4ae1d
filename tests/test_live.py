"""`live` end to end on a file played as a camera: bounded latency by dropping, outputs, errors."""

import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

import av
import cv2
import numpy as np
import pytest
import pyvirtualcam

from deocc_jax import errors
from deocc_jax.faces import sample_photos
from deocc_jax.io import video
from deocc_jax.restoration import frames as restore
from deocc_jax.streaming import clips, mjpeg, session, virtualcam
from deocc_jax.restoration.stabilize import StabilizerOptions
from tests import pairs_fixture as pf
from tests.test_live_parts import tiny_model
import re
import socket
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, FPS = 50, 25.0  # a 2 s clip


class FakeModel:
    """A blind (or guided) model: inverts a box in the lower half of the crop, optionally slowly."""

    def __init__(self, delay_s=0.0, guided=False, resolution=64):
        self.resolution, self.guided, self.delay_s = resolution, guided, delay_s
        self.description = f"fake model ({1000 * delay_s:.0f} ms)"
        self.calls, self.masks = 0, []

    def __call__(self, images, masks=None):
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls += 1
        r = self.resolution
        if self.guided:
            self.masks.append(masks)
            mask = masks.astype(np.float32) / 255.0
        else:
            mask = np.zeros((len(images), r, r, 1), np.float32)
            mask[:, r // 2:r * 7 // 8, r // 4:r * 3 // 4] = 1.0
        return {"deoccluded": (255 - images).astype(np.uint8), "mask": mask}


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """A 2 s H.264 clip (with an AAC tone) of a real portrait, masked and slowly panning."""
    c = clips.make_clip(sample_photos.face_photo_paths()[0], frames=FRAMES, size=(256, 192),
                        pan_frac=0.02, zoom=0.02, fps=FPS)
    return clips.write_clip(c, str(tmp_path_factory.mktemp("live") / "clip.mp4"), audio_hz=440.0)


def _audio(path):
    with av.open(path) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


def _run(clip_path, model, **kw):
    lines = []
    opts = session.LiveOptions(input=clip_path, quiet=True, **kw)
    report = session.run(opts, model=model, log=lines.append)
    return report, lines


def test_slow_model_in_real_time_drops_frames_and_latency_stays_bounded(clip_path, tmp_path):
    model = FakeModel(delay_s=0.1)
    out = str(tmp_path / "rt.mp4")
    start = time.monotonic()
    rep, lines = _run(clip_path, model, realtime=True, output=out)
    wall = time.monotonic() - start
    # Paced by the source, not by the model: a queue would take 50 x 0.1 s = 5 s.
    assert rep["elapsed_s"] < FRAMES / FPS + 1.5, rep
    # Every frame is accounted for: in = out + dropped, and the slow model made drops.
    assert rep["frames_in"] == FRAMES
    assert rep["frames_out"] + rep["dropped"] == rep["frames_in"]
    assert rep["dropped_by"].get("model busy", 0) > 0
    # At most one frame per 100 ms model call comes out.
    assert 4 <= rep["frames_out"] <= (FRAMES / FPS) / 0.1 + 2
    # Bounded latency: a few stage times, not a growing backlog (that would reach seconds).
    assert rep["latency_ms_p95"] < 800, rep
    assert rep["latency_ms_max"] < 1200, rep
    assert "latency p50" in lines[-2] and "dropped" in lines[-2]
    # The file holds the frames that came out, at their source times, with all the audio.
    info = video.probe(out)
    assert info.frame_count == rep["file_frames_written"]
    assert rep["file_frames_written"] + rep["file_frames_not_recorded"] == rep["frames_out"]
    assert info.duration_s <= FRAMES / FPS + 0.05
    assert _audio(out) == _audio(clip_path)
    assert wall < 30


def test_file_mode_processes_every_frame_in_order_and_keeps_audio(clip_path, tmp_path):
    out = str(tmp_path / "all.mp4")
    rep, _ = _run(clip_path, FakeModel(), output=out, stabilizer=None)
    assert rep["mode"] == "file" and rep["truncation"] is None
    assert (rep["frames_in"], rep["frames_out"], rep["dropped"]) == (FRAMES, FRAMES, 0)
    assert rep["faces"] >= FRAMES - 2  # the face is found in (almost) every frame
    with av.open(out) as o, av.open(clip_path) as s:
        assert o.streams.video[0].frames == FRAMES and o.streams.video[0].average_rate == FPS
        assert [f.time for f in o.decode(video=0)] == [f.time for f in s.decode(video=0)]
    assert _audio(out) == _audio(clip_path)
    # The face was changed (the fake model inverts its lower half); the corners were not.
    src = [f.rgb for f in video.VideoReader(clip_path).timed_frames()]
    got = [f.rgb for f in video.VideoReader(out).timed_frames()]
    diff = np.abs(np.stack(got).astype(int) - np.stack(src).astype(int)).max(-1)
    assert diff[:, 90:140, 100:160].mean() > 30
    assert diff[:, :20, :20].mean() < 3


def test_mjpeg_stream_is_read_by_a_plain_http_client(clip_path):
    started = threading.Event()
    info = {}
    result = {}

    def on_start(outputs):
        info.update(outputs)
        started.set()

    def run():
        result["report"] = session.run(session.LiveOptions(input=clip_path, realtime=True, serve=0,
                                                           quiet=True),
                                       model=FakeModel(delay_s=0.01), log=lambda s: None,
                                       on_start=on_start)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(60)
        url = info["stream_url"]
        host, port = url.split("//")[1].split("/")[0].split(":")
        assert host == "127.0.0.1"  # loopback unless --bind says otherwise
        got = mjpeg.read_stream(url, max_frames=10)
        assert got["content_type"].startswith("multipart/x-mixed-replace; boundary=")
        assert got["frames"] == 10
        frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in got["jpegs"]]
        assert all(f is not None and f.shape == (192, 256, 3) for f in frames)
        # FFmpeg (what ffplay and OBS use) demuxes the same stream.
        with av.open(url, format="mpjpeg", timeout=10) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (256, 192)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
        assert stats["frames_in"] > 0 and "latency_ms_p95" in stats
    finally:
        t.join(60)
    assert result["report"]["frames_out"] > 10


def test_benchmark_reads_the_stream_while_the_file_plays(clip_path):
    rep = session.benchmark(FakeModel(delay_s=0.05), clip_path)
    assert rep["mode"] == "file in real time" and rep["frames_in"] == FRAMES
    # The client receives the frames that came out (a slow client would skip some, never more).
    assert rep["frames_out"] // 2 <= rep["client"]["frames"] <= rep["frames_out"]
    assert rep["client"]["fps"] > 0 and rep["latency_ms_p95"] is not None


class _FakeCamBackend:
    instances = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.size, self.frames = (width, height), []
        _FakeCamBackend.instances.append(self)

    def send(self, frame):
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True

    def device(self):
        return "fake-cam"

    def native_fourcc(self):
        return None


def test_virtual_camera_gets_every_output_frame(clip_path, monkeypatch):
    monkeypatch.setitem(pyvirtualcam.camera.BACKENDS, "deocc_test", _FakeCamBackend)
    lines = []
    rep = session.run(session.LiveOptions(input=clip_path, realtime=True, virtual_camera="deocc_test",
                                          max_frames=20, quiet=True),
                      model=FakeModel(), log=lines.append)
    cam = _FakeCamBackend.instances[-1]
    assert cam.size == (256, 192) and cam.closed
    assert len(cam.frames) == rep["frames_out"] > 0
    assert cam.frames[0].shape == (256 * 192 * 3,)  # RGB, flattened by pyvirtualcam
    assert any("virtual camera: fake-cam" in line for line in lines)


def test_missing_virtual_camera_backend_names_what_to_install(clip_path, monkeypatch):
    class NoDevice:
        def __init__(self, **kw):
            raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99].")

    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {"v4l2loopback": NoDevice})
    with pytest.raises(virtualcam.VirtualCameraError) as e:
        session.run(session.LiveOptions(input=clip_path, virtual_camera="auto"), model=FakeModel(),
                    log=lambda s: None)
    msg = errors.one_line(e.value)
    assert virtualcam.INSTALL_HINT[platform.system()] in msg and "\n" not in str(e.value)
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {})
    with pytest.raises(virtualcam.VirtualCameraError, match="no virtual camera backend exists"):
        virtualcam.VirtualCamera(64, 48, 30)
    with pytest.raises(errors.InvalidInputError, match="unknown backend"):
        virtualcam.VirtualCamera(64, 48, 30, backend="nope")


def test_guided_model_gets_the_mask_and_blind_model_refuses_one(clip_path, tmp_path):
    template = np.zeros((100, 100), np.uint8)
    template[60:, :] = 255  # the lower face, on the aligned template
    mask_path = str(tmp_path / "mask.png")
    cv2.imwrite(mask_path, template)
    guided = FakeModel(guided=True)
    rep, _ = _run(clip_path, guided, mask=mask_path, max_frames=5, output=str(tmp_path / "g.mp4"))
    assert rep["frames_out"] == 5
    m = guided.masks[-1]
    assert m.shape == (1, 64, 64, 1) and m.dtype == np.uint8
    assert (m[0, 40:, :, 0] == 255).all() and (m[0, :36, :, 0] == 0).all()
    # A mask the size of the frame is taken in frame coordinates.
    frame_mask = np.zeros((192, 256), np.uint8)
    frame_mask[100:, :] = 255
    g = restore.GuideMask.from_array(frame_mask)
    assert g.in_frame and g.crop(np.array([[1.0, 0, 0], [0, 1.0, -60]]), 64)[45, 0, 0] == 255
    with pytest.raises(errors.InvalidInputError, match="guided model: pass the occluder's mask"):
        _run(clip_path, FakeModel(guided=True), output=str(tmp_path / "x.mp4"))
    with pytest.raises(errors.InvalidInputError, match="blind model"):
        _run(clip_path, FakeModel(), mask=mask_path, output=str(tmp_path / "y.mp4"))
    cv2.imwrite(str(tmp_path / "bad.png"), np.zeros((10, 30), np.uint8))
    with pytest.raises(errors.InvalidInputError, match="10 is neither the frame's size"):
        _run(clip_path, FakeModel(guided=True), mask=str(tmp_path / "bad.png"),
             output=str(tmp_path / "z.mp4"))


def test_tiny_model_runs_the_live_path(clip_path, tmp_path):
    model = tiny_model(64)
    rep, _ = _run(clip_path, model, max_frames=8, output=str(tmp_path / "tiny.mp4"),
                  stabilizer=StabilizerOptions())
    assert rep["frames_out"] == 8 and rep["faces"] >= 7
    assert rep["stage_ms"]["model"] > 0


def test_running_figures_on_sigusr1_and_periodically(clip_path):
    lines = []

    def poke():
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=poke, daemon=True).start()
    session.run(session.LiveOptions(input=clip_path, realtime=True, serve=0, quiet=True),
                model=FakeModel(), log=lines.append)
    running = [line for line in lines if "over the last frames" in line]
    assert running and "frames in" in running[0] and "p95" in running[0]
    lines.clear()
    session.run(session.LiveOptions(input=clip_path, realtime=True, serve=0, quiet=True,
                                    report_every_s=0.5), model=FakeModel(), log=lines.append)
    assert len([line for line in lines if "over the last frames" in line]) >= 2


def test_user_mistakes_are_one_line_errors(clip_path, tmp_path, monkeypatch):
    with pytest.raises(errors.InvalidInputError, match="nothing to output"):
        _run(clip_path, FakeModel())
    with pytest.raises(errors.OutputExistsError, match="is the input file"):
        _run(clip_path, FakeModel(), output=clip_path, overwrite=True)
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"keep me")
    with pytest.raises(errors.OutputExistsError, match="pass --overwrite"):
        _run(clip_path, FakeModel(), output=str(existing))
    assert existing.read_bytes() == b"keep me"
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        with pytest.raises(errors.InvalidInputError, match="--window needs a graphical display"):
            _run(clip_path, FakeModel(), window=True)
    with pytest.raises(errors.InputNotFoundError):
        _run(str(tmp_path / "nope.mp4"), FakeModel(), serve=0)


def test_binary_reports_a_missing_camera_in_one_line():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "deocc_jax.live", "--input=97", "--virtual_camera"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == errors.EXIT_USER_ERROR, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: camera 97 ") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- signals, warm-up


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")


# `python -m deocc_jax.live` with a fake model whose first call (the warm-up) takes argv[1]
# seconds; the real landmarker, pipeline, encoder and signal handling.
_LIVE = textwrap.dedent("""
    import sys, time
    import numpy as np
    from deocc_jax import live
    from deocc_jax.streaming import session

    WARMUP_S = float(sys.argv[1])

    class Model:
        resolution, guided, description, calls = 64, False, "fake model", 0

        def __call__(self, images, masks=None):
            self.calls += 1
            if self.calls == 1:
                print("warming up", flush=True)
                time.sleep(WARMUP_S)
            mask = np.zeros((len(images), 64, 64, 1), np.float32)
            mask[:, 32:56, 16:48] = 1.0
            return {"deoccluded": (255 - images).astype(np.uint8), "mask": mask}

    session.open_model = lambda opts: Model()
    sys.argv = ["live"] + sys.argv[2:]
    live.run()
""")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    from deocc_jax.faces import sample_photos
    from deocc_jax.streaming import clips
    c = clips.make_clip(sample_photos.face_photo_paths()[0], frames=250, size=(256, 192), fps=25.0)
    return clips.write_clip(c, str(tmp_path_factory.mktemp("clip") / "long.mp4"), audio_hz=440.0)


def _live(tmp_path, clip, warmup_s, wait_for, sig, after_s):
    out = tmp_path / "o"
    out.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIVE, str(warmup_s), f"--input={clip}", "--realtime", "--quiet",
         f"--output={out / 'rec.mp4'}", f"--report={out / 'report.json'}", "--serve=0",
         f"--jax_cache_dir={tmp_path / 'jax'}", "--report_every=0.3"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=pf.default_sigint)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if re.search(wait_for, line):
                break
            assert time.time() < deadline
        time.sleep(after_s)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err, out


def test_sigterm_ends_live_like_sigint_keeping_the_recording(tmp_path, long_clip):
    rc, err, out = _live(tmp_path, long_clip, 0, r"frames in \d+, out [1-9]", signal.SIGTERM, 1.0)
    assert rc == 143 and "Traceback" not in err, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_by_signal"] == "SIGTERM" and 0 < report["frames_out"] < 250
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: kept ") and str(out / "rec.mp4") in last, last
    with av.open(str(out / "rec.mp4")) as c:  # playable, every recorded frame in it
        assert sum(1 for _ in c.decode(video=0)) == report["file_frames_written"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["rec.mp4", "report.json"]  # no .partial
    # Ctrl-C during the model's warm-up (not cut short: XLA may be compiling): the same
    # clean end once it returns, before any frame, nothing half-written.
    rc, err, out = _live(tmp_path / "int", long_clip, 4, "warming up", signal.SIGINT, 0.5)
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_by_signal"] == "SIGINT" and report["frames_out"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_stream_shows_a_starting_frame_while_the_model_warms_up(long_clip):
    import threading
    from deocc_jax.streaming import mjpeg, session

    class SlowStart:
        resolution, guided, description, calls = 64, False, "slow start", 0

        def __call__(self, images, masks=None):
            self.calls += 1
            if self.calls == 1:
                time.sleep(5.0)  # compiling; the client below gives up after 2 s of silence
            return {"deoccluded": images, "mask": np.zeros((len(images), 64, 64, 1), np.float32)}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = {}

    def client():
        deadline = time.time() + 30
        while True:
            try:
                got.update(mjpeg.read_stream(f"http://127.0.0.1:{port}/stream.mjpg", max_frames=5,
                                             max_seconds=20, timeout_s=2.0))
                return
            except ConnectionRefusedError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                got["error"] = repr(e)
                return

    reader = threading.Thread(target=client, daemon=True)
    reader.start()
    session.run(session.LiveOptions(input=long_clip, realtime=True, serve=port, quiet=True,
                                    max_frames=60), model=SlowStart(), log=lambda _: None)
    reader.join(30)
    assert "error" not in got, got.get("error")
    assert got["placeholders"] >= 3 and got["frames"] == 5
