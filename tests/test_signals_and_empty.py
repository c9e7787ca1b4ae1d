"""Signals end a run keeping what was made; empty results are errors; the web server's bad paths.

One test per finding; each failed against the code before its fix.
"""

import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from deocc_jax import errors
from deocc_jax.faces import FaceAnalyzer, largest_face
from deocc_jax.io import workdir_lock
from tests import pairs_fixture as pf

REPO = pathlib.Path(__file__).resolve().parents[1]
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")


# ----------------------------------------------------------------------------- live

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
    from deocc_jax import sample_photos
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
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


# ----------------------------------------------------------------------------- train

def test_ctrl_c_in_training_saves_like_sigterm(tmp_path, faces_dir):
    from deocc_jax import checkpointing
    data = pf.write_tiny_dataset(tmp_path / "data", faces_dir, splits={"train": 8})
    workdir = tmp_path / "run"
    proc = subprocess.Popen(pf.train_command(workdir, data, num_train_steps=100000,
                                             checkpoint_every_steps=1000, eval_every_steps=0,
                                             log_every_steps=1),
                            cwd=pf.REPO, env=pf.subprocess_env(num_devices=1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # once a step is done (compiling may take minutes on a busy CPU)
            lines.append(line)
            if "step 2/100000" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        err = "".join(lines) + err
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "saved checkpoint at step" in err and "stopped early" in err and "SIGINT" in err
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    steps = ckpt.all_steps()
    ckpt.close()
    assert len(steps) == 1 and 0 < steps[0] < 1000, steps


# ----------------------------------------------------------------------------- workdir lock

def test_stale_lock_of_this_host_is_taken_over_and_another_hosts_is_not(tmp_path, caplog):
    """After kill -9 the same train command resumes: the free flock proves the holder is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-12-07T10:00:00+00:00"}
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(str(tmp_path)) as lock:
        assert lock.previous["pid"] == dead.pid
        assert workdir_lock.read_holder(str(tmp_path))["pid"] == os.getpid()
    taken = [r.getMessage() for r in caplog.records if "taking the workdir over" in r.getMessage()]
    assert len(taken) == 1 and f"pid {dead.pid} on host {socket.gethostname()}" in taken[0]
    # Another host's holder may be alive (a shared folder): still refused without --break_lock.
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({**holder, "host": "elsewhere"}))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="cannot be checked.*--break_lock"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()


# ----------------------------------------------------------------------------- empty results

def test_prep_without_a_face_writes_nothing_and_train_refuses_an_empty_split(tmp_path, faces_dir):
    from data_prep import build
    from deocc_jax import train_lib

    photos = tmp_path / "faceless"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"wall{i}.png"), np.full((96, 96, 3), 60 + 90 * i, np.uint8))
    out = tmp_path / "ds"
    with pytest.raises(errors.UserError, match=r"no pair was made .*no_face 2"):
        build.build_dataset(str(photos), str(out), resolution=32, pipeline_args=IN_PROCESS)
    assert not out.exists() and not list(tmp_path.glob(".ds.building*"))
    # A dataset whose train split is empty (made by hand: prep no longer writes one).
    data = pf.write_tiny_dataset(tmp_path / "empty_train", faces_dir,
                                 splits={"train": 0, "validation": 2})
    workdir = tmp_path / "run"
    with pytest.raises(errors.InvalidInputError, match="train split holds no record"):
        train_lib.train_and_evaluate(pf.tiny_config(data, num_train_steps=2), str(workdir))
    assert not workdir.exists()


# ----------------------------------------------------------------------------- paired sizes, GIF

def test_paired_sizes_must_match_and_an_animation_is_its_first_frame(tmp_path, faces_dir, caplog):
    from data_prep import build

    clean_dir, occ_dir = tmp_path / "clean", tmp_path / "occluded"
    clean_dir.mkdir()
    occ_dir.mkdir()
    for stem, photo in (("a", "0.jpg"), ("b", "10.jpg")):
        img = cv2.cvtColor(cv2.imread(str(faces_dir / photo)), cv2.COLOR_BGR2RGB)
        if stem == "a":  # the clean original is an animated GIF: its first frame is the photo
            frames = [Image.fromarray(img), Image.fromarray(255 - img)]
            frames[0].save(clean_dir / "a.gif", save_all=True, append_images=frames[1:])
            with Image.open(clean_dir / "a.gif") as gif:
                img = np.asarray(gif.convert("RGB"))
        else:
            Image.fromarray(img).save(clean_dir / f"{stem}.png")
        with FaceAnalyzer() as fa:
            x0, y0, x1, y1 = (int(v) for v in largest_face(fa.detect(img)).bbox)
        occluded = img.copy()  # a box over the mouth
        occluded[y0 + (y1 - y0) * 7 // 10:y0 + (y1 - y0) * 9 // 10,
                 x0 + (x1 - x0) // 4:x1 - (x1 - x0) // 4] = (20, 120, 220)
        h, w = img.shape[:2]
        if stem == "b":  # a half-size copy: not pixel-aligned with its original
            occluded = cv2.resize(occluded, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        Image.fromarray(occluded).save(occ_dir / f"{stem}_Mask.png")
    with caplog.at_level(logging.WARNING):
        info = build.build_dataset(str(occ_dir), str(tmp_path / "ds"), resolution=64,
                                   clean_dir=str(clean_dir), splits="train=1",
                                   pipeline_args=IN_PROCESS)
    assert info["images"] == {"read": 2, "accepted": 1, "rejected": 1}
    assert info["rejected"]["pair_mismatch"] == 1
    rejected = (tmp_path / "ds" / "rejected.tsv").read_text()
    assert "b_Mask.png" in rejected and "must be the same size" in rejected
    said = [r.getMessage() for r in caplog.records if "a.gif" in r.getMessage()]
    assert said and "2 frames" in said[0] and "first frame" in said[0]


# ----------------------------------------------------------------------------- web server

def _fake_web_dir(root: pathlib.Path) -> pathlib.Path:
    """A web/ folder with a current build: what check_build accepts, without npm."""
    from deocc_jax import web
    (root / "src").mkdir(parents=True)
    for name in ("build.mjs", "package.json", "package-lock.json", "src/app.ts"):
        (root / name).write_text(f"// {name}\n")
    dist = root / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html>")
    (dist / "app.js").write_text("console.log(1);\n")
    (dist / "big.wasm").write_bytes(os.urandom(1 << 16) * 512)  # 32 MiB: outlasts socket buffers
    (dist / "build.json").write_text(json.dumps({"source_sha256": web.source_hash(str(root)),
                                                 "vendor": []}))
    return root


def _status(port: int, raw_path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {raw_path} HTTP/1.0\r\n\r\n".encode())
        head = s.recv(200)
    assert head, f"{raw_path}: the server dropped the connection without an answer"
    return int(head.split()[1])


def test_web_server_answers_bad_paths_and_takes_hang_ups_quietly(tmp_path, monkeypatch, capfd):
    import threading
    from deocc_jax import web
    monkeypatch.setattr(web, "model_info", lambda path: {"name": "m.onnx", "resolution": 64, "bytes": 1})
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    srv = web.PageServer(str(model), port=0, web_dir=str(_fake_web_dir(tmp_path / "web")))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    port = srv.server_address[1]
    try:
        assert _status(port, "/app.js") == 200
        for bad in ("/app.js%00.html", "/%00", "/app%0a.js", "/%ff%fe.js"):
            assert _status(port, bad) == 400, bad
        for missing in ("/nope.js", "/../../etc/passwd", "/" + "a" * 5000):
            assert _status(port, missing) == 404, missing
        for _ in range(3):  # downloads the client abandons
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
                s.sendall(b"GET /big.wasm HTTP/1.0\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.0 200")
        time.sleep(1.0)
        assert _status(port, "/index.html") == 200
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "code 400" in line]
    assert len(lines) == 4 and all("bad path" in line for line in lines), err
