"""The writer policy and signals of `infer` and `export`: nothing replaced, nothing lost, one line.

Each test reproduces what a new user did: replaced a file by running `infer`
onto it, lost a mask to a photo of a similar name, pressed Ctrl-C during the
model's warm-up, ran offline without the landmark model, fed a video with no
decodable frame, exported onto a file. The last test searches the writing
code for a writer that bypasses `io.atomic`.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import av
import cv2
import numpy as np
import pytest

from deocc_jax import errors
from deocc_jax.artifacts import export_lib, loading, predictors
from deocc_jax.io import assets
from deocc_jax.restoration import infer_lib
from deocc_jax.io import atomic, video
from tests import pairs_fixture as pf


# `python -m deocc_jax.infer` with the painter as its model; it can announce a model
# call (a marker file) and take its time there, so a test can signal it at that moment.
_INFER_WITH_PAINTER = """
import os, pathlib, sys, time
from deocc_jax import infer
from deocc_jax.artifacts import predictors

def slow_painter(*args, **kwargs):
    # Imported when infer opens its model: infer takes the signals before its heavy imports.
    from tests.pairs_fixture import Painter

    class Slow(Painter):
        description = "a slow test painter"

        def __call__(self, images, masks=None):
            if self.calls + 1 >= int(os.environ.get("MARK_AT_CALL", "0") or 10**9):
                pathlib.Path(os.environ["MARK"]).touch()
                time.sleep(float(os.environ.get("SLEEP_S", "0")))
            return super().__call__(images, masks)

    return Slow()

predictors.open_predictor = slow_painter
sys.argv = ["infer", *sys.argv[1:]]
infer.run()
"""


def _start_infer(*args, **env):
    return subprocess.Popen([sys.executable, "-c", _INFER_WITH_PAINTER, *map(str, args)],
                            cwd=pf.REPO, env=pf.subprocess_env(num_devices=1, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pf.default_sigint)


def _signal_at_mark(proc, mark, signum, timeout=240):
    deadline = time.monotonic() + timeout
    while not mark.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the model was never called (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signum)
    return proc.communicate(timeout=timeout)


def _one_error_line(rc, stderr, expected_rc, prefix="error: "):
    assert rc == expected_rc, (rc, stderr[-3000:])
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- 1. --overwrite


def test_infer_refuses_to_replace_an_existing_output_without_overwrite(tmp_path):
    clip = pf.face_video(tmp_path / "clip.mp4")
    out = tmp_path / "o" / "v.mp4"
    out.parent.mkdir()
    out.write_bytes(b"keep")
    with pytest.raises(errors.OutputExistsError, match=rf"{re.escape(str(out))}: exists; pass --overwrite"):
        infer_lib.process_video(pf.Painter(), str(clip), str(out), log=lambda s: None)
    assert out.read_bytes() == b"keep" and pf.listing(out.parent) == ["v.mp4"]
    stats = infer_lib.process_video(pf.Painter(), str(clip), str(out), overwrite=True,
                                    log=lambda s: None)
    assert video.probe(str(out)).frame_count == stats["frames"] == 12
    # A photo folder: one existing output is enough to refuse the run before any photo is read.
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(photos / f"{name}.png"), cv2.cvtColor(pf.face_rgb(128), cv2.COLOR_RGB2BGR))
    folder = tmp_path / "restored"
    folder.mkdir()
    (folder / "b.png").write_bytes(b"keep")
    with pytest.raises(errors.OutputExistsError, match="b.png: exists; pass --overwrite"):
        infer_lib.process_photos(pf.Painter(), str(photos), str(folder), log=lambda s: None)
    assert pf.listing(folder) == ["b.png"] and (folder / "b.png").read_bytes() == b"keep"
    infer_lib.process_photos(pf.Painter(), str(photos), str(folder), overwrite=True, log=lambda s: None)
    assert pf.listing(folder) == ["a.png", "b.png"] and (folder / "b.png").read_bytes() != b"keep"
    # The binary: one line, exit 2, the file kept; and the report is planned with the rest.
    proc = _start_infer(f"--input={clip}", f"--output={out}", "--quiet")
    _, err = proc.communicate(timeout=300)
    line = _one_error_line(proc.returncode, err, errors.EXIT_USER_ERROR)
    assert str(out) in line and "--overwrite" in line
    report = tmp_path / "report.json"
    report.write_text("keep")
    with pytest.raises(errors.OutputExistsError, match="report.json: exists"):
        infer_lib.run(None, str(clip), str(tmp_path / "new.mp4"), report=str(report))
    assert report.read_text() == "keep" and not (tmp_path / "new.mp4").exists()


# ----------------------------------------------------------------------------- 2. name collisions


def test_outputs_that_collide_are_refused_naming_both(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("x", "x_mask"):
        cv2.imwrite(str(photos / f"{name}.jpg"), cv2.cvtColor(pf.face_rgb(128), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    with pytest.raises(errors.OutputExistsError) as refused:
        infer_lib.process_photos(pf.Painter(), str(photos), str(out), save_masks=True,
                                 log=lambda s: None)
    message = errors.one_line(refused.value)
    assert f"the mask of {photos / 'x.jpg'}" in message
    assert f"the output of {photos / 'x_mask.jpg'}" in message
    assert str(out / "x_mask.png") in message
    assert not out.exists()  # refused before anything was written
    # Without masks the same folder is fine; the report may not be one of the outputs either.
    infer_lib.process_photos(pf.Painter(), str(photos), str(out), log=lambda s: None)
    assert pf.listing(out) == ["x.png", "x_mask.png"]
    with pytest.raises(errors.OutputExistsError, match=r"the output of .*x\.jpg and the report"):
        infer_lib.plan_photos(str(photos), str(tmp_path / "o2"), report=str(tmp_path / "o2" / "x.png"))


# ----------------------------------------------------------------------------- 4. signals


def test_sigint_during_warm_up_and_sigterm_mid_video_end_cleanly(tmp_path):
    clip = pf.face_video(tmp_path / "clip.mp4", frames=40)
    # Ctrl-C while the model warms up: nothing done, nothing written, one line, 130.
    out, mark = tmp_path / "o" / "x.mp4", tmp_path / "warming"
    proc = _start_infer(f"--input={clip}", f"--output={out}", "--quiet", MARK=mark,
                        MARK_AT_CALL=1, SLEEP_S=2)
    _, err = _signal_at_mark(proc, mark, signal.SIGINT)
    line = _one_error_line(proc.returncode, err, 130, prefix="stopped by SIGINT")
    assert "warm-up" in line and "nothing was written" in line
    assert not out.parent.exists()
    # SIGTERM after a few frames: the video keeps them, complete and playable, and the report says so.
    report = tmp_path / "report.json"
    proc = _start_infer(f"--input={clip}", f"--output={out}", f"--report={report}", "--quiet",
                        MARK=mark.with_name("frames"), MARK_AT_CALL=6, SLEEP_S=0.3)
    _, err = _signal_at_mark(proc, mark.with_name("frames"), signal.SIGTERM)
    line = _one_error_line(proc.returncode, err, 143, prefix="stopped by SIGTERM")
    done = json.loads(report.read_text())
    assert 1 <= done["frames"] < 40 and done["stopped_by"] == "SIGTERM"
    assert f"{done['frames']} frames done, kept in {out}" in line
    assert video.probe(str(out)).frame_count == done["frames"]
    assert pf.listing(out.parent) == ["x.mp4"]  # no hidden partial file left


def _catches(pid, signum):
    """Whether process `pid` has a handler for `signum` (Linux: /proc/PID/status SigCgt)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught >> (signum - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_while_infer_loads_stops_it_before_the_model(tmp_path):
    # Python's own SIGINT handler raises inside whatever import is running, and OpenCV's
    # loader swallows that (the run went on in full). Once infer has taken SIGTERM, it
    # has taken SIGINT too, long before its imports are done.
    clip = pf.face_video(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "o" / "x.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "deocc_jax.infer", f"--input={clip}",
                             f"--output={out}", "--quiet"], cwd=pf.REPO,
                            env=pf.subprocess_env(num_devices=1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=pf.default_sigint)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    line = _one_error_line(proc.returncode, err, 130, prefix="stopped by SIGINT")
    assert "before the model was loaded; nothing was written" in line
    assert not out.parent.exists()


# ----------------------------------------------------------------------------- 6. missing asset


def test_missing_landmark_model_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), cv2.cvtColor(pf.face_rgb(128), cv2.COLOR_RGB2BGR))
    monkeypatch.setenv(assets.ENV_ASSETS_DIR, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(assets, "_download", _offline)
    monkeypatch.setattr(predictors, "open_predictor", _never_loaded)
    out = tmp_path / "o"
    with pytest.raises(errors.UserError, match="face_landmarker.task.* not found"):
        infer_lib.run(None, str(photo), str(out))
    assert not out.exists() and not (tmp_path / "empty-cache").exists()


def _offline(*args, **kwargs):
    raise OSError("network unreachable")


def _never_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the checks that need no model")


# ----------------------------------------------------------------------------- 7. empty results


def test_nothing_decodable_is_an_error_naming_no_output(tmp_path):
    src = pf.face_video(tmp_path / "full.mp4", frames=24, faststart=True)
    with av.open(str(src)) as c:  # cut inside the first frame's data
        first = next(p for p in c.demux(c.streams.video[0]) if p.size)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[:first.pos + 4])
    lines = []
    with pytest.raises(errors.InvalidInputError, match=r"cut.mp4: no frame could be decoded \(0 of "
                                                       r"24; .*\); nothing was written"):
        infer_lib.process_video(pf.Painter(), str(cut), str(tmp_path / "out"), log=lines.append)
    assert not (tmp_path / "out").exists() and not any("->" in line for line in lines)
    # A folder where no photo can be read: one line, exit 2, and no output folder.
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"not a photo")
    (photos / "b.png").write_bytes(b"")
    out = tmp_path / "restored"
    proc = _start_infer(f"--input={photos}", f"--output={out}", "--quiet")
    _, err = proc.communicate(timeout=300)
    line = _one_error_line(proc.returncode, err, errors.EXIT_USER_ERROR)
    assert "none of the 2 photos could be read" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- 8. export onto a file


def test_export_onto_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    target = tmp_path / "exports"
    target.write_text("keep")
    monkeypatch.setattr(loading, "load_model", _never_loaded)
    with pytest.raises(errors.UserError, match=rf"--output_dir {re.escape(str(target))}: .*not a folder"):
        export_lib.export_model("pretrained/deocc-realtime-128", str(target))
    assert target.read_text() == "keep"


class _StopAfter:
    """A stand-in for `errors.StopSignals` whose SIGTERM arrives at its n-th look."""

    name, signum = "SIGTERM", signal.SIGTERM

    def __init__(self, n):
        self.looks, self.n = 0, n

    @property
    def requested(self):
        self.looks += 1
        return self.looks >= self.n

    def interrupted(self, message):
        return errors.Interrupted(self.signum, f"stopped by {self.name}: {message}")


def test_export_stopped_by_a_signal_leaves_nothing_unfinished(tmp_path, monkeypatch):
    config, variables = pf.random_tiny(32)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loading.LoadedModel(
        config, variables, 7, "tiny", "pretrained"))
    monkeypatch.setattr(export_lib.sample_photos, "aligned_faces",
                        lambda paths, r, landmarker=None: np.zeros((3, r, r, 3), np.uint8))

    def converted(predict, variables, path, **kwargs):  # a conversion takes its time; not needed here
        atomic.write_bytes(path, b"onnx")
        return path

    monkeypatch.setattr(export_lib.onnx, "export_onnx", converted)
    out = tmp_path / "exports"
    with pytest.raises(errors.Interrupted) as stopped:
        export_lib.export_model("tiny", str(out), formats=("onnx",), stop=_StopAfter(2),
                                log=lambda s: None)
    assert stopped.value.exit_code == 143
    assert "exports published: none; " in str(stopped.value) and "deocc-7.onnx was not finished" \
        in str(stopped.value)
    assert pf.listing(out) == []  # neither the unchecked export nor its staging folder


# ----------------------------------------------------------------------------- the class: one policy


# The whole library, its pipelines and launchers; `io/atomic.py` is the policy itself.
WRITING_CODE = ["deocc_jax", "data_prep", "launch"]
POLICY = "deocc_jax/io/atomic.py"
# An open() or a record/video writer on a temporary name is fine: io.atomic publishes it.
_NOT_A_TEMP = r"(?!\s*(self\._)?\w*(tmp|temp)\b)"
# Ways to put bytes on disk that skip `io.atomic`'s refusal and temporary sibling.
BYPASSES = re.compile(
    r"os\.replace\(|os\.rename\(|os\.link\(|shutil\.(copy2?|copyfile|copytree|move)\(|\.imwrite\(|"
    rf"\bopen\({_NOT_A_TEMP}.*['\"][wax]b?\+?['\"]|gfile\.GFile\(.*['\"][wa]|"
    rf"(TFRecordWriter|ArrayRecordWriter|cv2\.VideoWriter)\({_NOT_A_TEMP}|FileSystems\.create\(|"
    r"os\.open\(.*O_CREAT|\.save_model\([^)]*(tmp|path)\b|(?<!atomic)\.write_(text|bytes)\(|"
    r"np\.save|\.tofile\(|json\.dump\((?!.*sys\.std)")
# A writer outside the policy says why on its line or in the comment just above it:
# object stores (an object appears whole on close), lock files, a staging folder
# published whole, a checksum-verified cache. orbax writes checkpoints itself (a
# temporary folder renamed on commit) and is not searched for.
EXEMPT = re.compile(r"writer-policy: exempt \(\w")


def _bypasses(path, text):
    lines = text.splitlines()
    hits = []
    for i, line in enumerate(lines):
        if not BYPASSES.search(line) or EXEMPT.search(line):
            continue
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not EXEMPT.search(lines[j]):
            j -= 1
        if j >= 0 and lines[j].strip().startswith("#"):
            continue  # the comment block above says why
        hits.append(f"{path}:{i + 1}: {line.strip()}")
    return hits


def test_no_writer_bypasses_the_writer_policy(tmp_path):
    files = []
    for entry in WRITING_CODE:
        path = pf.REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    files = [f for f in files if f.relative_to(pf.REPO).as_posix() != POLICY]
    assert {"deocc_jax/evaluation/eval_lib.py", "deocc_jax/data/writer.py", "deocc_jax/streaming/clips.py",
            "data_prep/pipeline.py", "launch/quickstart.py"} <= {
                f.relative_to(pf.REPO).as_posix() for f in files}  # the whole library
    hits = [h for f in files for h in _bypasses(f.relative_to(pf.REPO), f.read_text())]
    assert hits == []
    # The search finds what it is for, and an exemption needs its reason.
    planted = ('with open(md_path, "w") as f:\n', 'cv2.imwrite(path, grid)\n',
               '(p / "config.json").write_text(t)\n', 'os.replace(new, out)\n',
               'with tf.io.TFRecordWriter(path) as w:\n', 'json.dump(meta, f)\n',
               'with av.open(path, "w") as out:\n', 'fd = os.open(p, os.O_WRONLY | os.O_CREAT)\n',
               'x.write_bytes(b)  # writer-policy: exempt ()\n')
    assert [len(_bypasses("x.py", code)) for code in planted] == [1] * len(planted)
    assert _bypasses("x.py", "# writer-policy: exempt (a lock file)\nfd = os.open(p, os.O_CREAT)\n"
                     "atomic.write_text(p, t)\nwith open(temp, 'wb') as f:\n"
                     "json.dump(x, sys.stdout)\n") == []
    # The policy itself: an existing file is refused, and so is one that appears before the rename.
    path = tmp_path / "a.txt"
    atomic.write_text(str(path), "first")
    with pytest.raises(errors.OutputExistsError, match="exists; pass --overwrite"):
        atomic.write_text(str(path), "second")
    with pytest.raises(errors.OutputExistsError):
        with atomic.atomic_file(str(tmp_path / "b.txt"), "w") as f:
            f.write("mine")
            (tmp_path / "b.txt").write_text("theirs")  # another process got there first
    assert (tmp_path / "b.txt").read_text() == "theirs" and path.read_text() == "first"
    atomic.write_text(str(path), "second", overwrite=True)
    assert path.read_text() == "second" and pf.listing(tmp_path) == ["a.txt", "b.txt"]


# ----------------------------------------------------------------------------- evaluate --output


def test_evaluate_refuses_an_existing_output_without_overwrite(tmp_path):
    from deocc_jax.evaluation import eval_lib
    out = tmp_path / "eval" / "m.json"
    out.parent.mkdir()
    (tmp_path / "eval" / "m.md").write_text("keep")  # one of the three outputs is enough
    missing = str(tmp_path / "no-dataset")
    # Refused before the dataset is read (minutes of evaluation are not thrown away at the end).
    with pytest.raises(errors.OutputExistsError, match=r"m\.md: exists; pass --overwrite"):
        eval_lib.evaluate(None, missing, output=str(out), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="data_prep.build"):  # --overwrite goes on
        eval_lib.evaluate(None, missing, output=str(out), overwrite=True, log=lambda s: None)
    assert pf.listing(out.parent) == ["m.md"] and (out.parent / "m.md").read_text() == "keep"
    # The binary: one line naming the file and the flag, exit 2, the file kept.
    out.write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "deocc_jax.evaluate", f"--data_dir={missing}",
                           f"--output={out}", "--noface_metrics"], cwd=pf.REPO,
                          env=pf.subprocess_env(num_devices=1), capture_output=True, text=True,
                          timeout=300)
    line = _one_error_line(proc.returncode, proc.stderr, errors.EXIT_USER_ERROR)
    assert str(out) in line and "--overwrite" in line and out.read_text() == "keep"


# ----------------------------------------------------------------------------- library writers


def test_library_writers_refuse_or_replace_on_purpose(tmp_path):
    from deocc_jax.data import writer
    # A pretrained folder is not written over another one by accident.
    config, variables = pf.random_tiny(32)
    loading.save_pretrained(str(tmp_path / "m"), config, variables, 7, name="m")
    with pytest.raises(errors.OutputExistsError, match="generator.msgpack: exists"):
        loading.save_pretrained(str(tmp_path / "m"), config, variables, 8, name="m")
    assert loading.load_model(str(tmp_path / "m")).step == 7
    loading.save_pretrained(str(tmp_path / "m"), config, variables, 8, name="m", overwrite=True)
    assert loading.load_model(str(tmp_path / "m")).step == 8
    # A shard written again (a retried Beam bundle) is replaced whole, leaving no temporary.
    shards = tmp_path / "staging"
    for _ in range(2):
        writer.write_shard(str(shards), "train", 0, 1, [b"a", b"bc"])
    names = ["train.array_record-00000-of-00001", "train.tfrecord-00000-of-00001"]
    assert pf.listing(shards) == names
    assert writer.read_array_record(str(shards / names[0])) == [b"a", b"bc"]


# ----------------------------------------------------------------------------- animated photos


def test_an_animated_gif_is_read_counted_and_its_first_frame_named(tmp_path):
    from PIL import Image
    photos = tmp_path / "in"
    photos.mkdir()
    face = pf.face_rgb(128)
    cv2.imwrite(str(photos / "a.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    frames = [Image.fromarray(face), Image.fromarray(np.roll(face, 9, axis=1))]
    frames[0].save(photos / "b.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    lines = []
    reports = infer_lib.process_photos(pf.Painter(), str(photos), str(tmp_path / "out"),
                                       log=lines.append)
    assert [os.path.basename(r["input"]) for r in reports] == ["a.png", "b.gif"]
    assert [r["animation_frames"] for r in reports] == [1, 2]
    warned = [line for line in lines if "only its first frame is used" in line]
    assert warned == [f"{photos / 'b.gif'}: an animation of 2 frames; only its first frame is used"]
    assert lines[-1].startswith("2 photo(s): 2 restored") and "; 1 animation(s), first frame only" \
        in lines[-1]
    assert pf.listing(tmp_path / "out") == ["a.png", "b.png"]
