"""Fault injection for issue 10: one regression test per finding (prep's #2/#5/#10 are in test_data_prep).

Each test reproduces what a careless or hostile user did and checks that
nothing is lost and nothing is silent: outputs never replace inputs, exports
and photo/video outputs appear only complete and checked, a workdir has one
trainer, a refused resume writes nothing, a flipped byte in a checkpoint is
caught, infer decodes like prep, an empty validation split is said out loud,
and every such mistake ends in one line without a traceback.

Imports of modules that issue 10 added are inside the tests, so that this file
also runs against the code before them (every test here failed there).
"""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import av
import cv2
import jax
import numpy as np
import pytest
from PIL import Image

from deocc_jax import checkpointing, errors, infer_lib, loading, sample_photos, sharding, train_lib
from tests import pairs_fixture as pf


N = 4  # steps of the shared run; checkpoints at 2 and 4


def _config(data_dir, **kw):
    base = {"num_train_steps": N, "checkpoint_every_steps": 2, "eval_every_steps": 2,
            "log_every_steps": 2, "keep_checkpoints": 20}
    base.update(kw)
    return pf.tiny_config(data_dir, **base)


class _Records(logging.Handler):
    """Collects absl's log records (caplog cannot reach a module fixture)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, faces_dir):
    # Its validation split is empty, as when prep rejected the split's only photo (#8).
    return pf.tiny_dataset(tmp_path_factory, faces_dir, splits={"train": 16, "validation": 0})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """N steps of the tiny config with validation every 2 steps on the empty split."""
    workdir = tmp_path_factory.mktemp("trained")
    records = _Records()
    logging.getLogger("absl").addHandler(records)
    try:
        result = train_lib.train_and_evaluate(_config(data_dir), str(workdir))
    finally:
        logging.getLogger("absl").removeHandler(records)
    return {"workdir": workdir, "result": result, "warnings": records.messages}


def _copy(workdir, tmp_path, name="w"):
    dst = tmp_path / name
    shutil.copytree(workdir, dst)
    return dst


def _flip_byte(item_dir):
    """Flips one bit in the middle of the item's largest data file; the size stays the same."""
    files = [p for p in item_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return target


def _run_binary(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=pf.REPO,
                          env=pf.subprocess_env(num_devices=1), capture_output=True, text=True,
                          timeout=timeout)


def _assert_one_line_error(proc, *fragments):
    """Exit 2, one `error:` line holding every fragment, and no traceback (#9)."""
    tail = proc.stderr[-3000:]
    assert proc.returncode == errors.EXIT_USER_ERROR, (proc.returncode, tail)
    assert "Traceback" not in proc.stderr, tail
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, tail
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class _Painter:
    """A blind stand-in model: paints each crop's lower half and predicts it as occluded."""

    resolution, guided, description = 32, False, "a test painter"

    def __init__(self, fail_on_call=None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, images, masks=None):
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("the model crashed")
        n, r = images.shape[:2]
        mask = np.zeros((n, r, r, 1), np.float32)
        mask[:, r // 2:] = 1.0
        out = images.copy()
        out[:, r // 2:] = (255, 0, 255)
        return {"deoccluded": out, "mask": mask}


def _face_rgb(size=256):
    bgr = cv2.imread(sample_photos.face_photo_paths()[0], cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def _face_video(path, frames=12, faststart=False):
    """An H.264 clip of a real face photo, panning slightly."""
    face = _face_rgb(128)
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for i in range(frames):
            frame = np.roll(face, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@contextlib.contextmanager
def _read_only_folder(path):
    """A folder nobody can write, root included (chattr +i), else skip."""
    path.mkdir(parents=True, exist_ok=True)
    undo = None
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo = lambda: path.chmod(0o755)  # noqa: E731
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(path)], check=True)  # noqa: E731
    try:
        try:
            (path / "probe").write_bytes(b"")
        except OSError:
            yield path
        else:
            (path / "probe").unlink()
            pytest.skip("cannot make a read-only folder here (root, and chattr unsupported)")
    finally:
        if undo:
            undo()


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- 1. output = input


def test_infer_refuses_outputs_that_are_inputs(trained, tmp_path):
    # A video written onto itself (a 40-frame clip became 2 frames, exit 0).
    clip = _face_video(tmp_path / "clip.mp4")
    before = clip.read_bytes()
    proc = _run_binary("deocc_jax.infer", f"--model={trained['workdir']}", f"--input={clip}",
                       f"--output={clip}")
    _assert_one_line_error(proc, "--output", str(clip), "the input")
    assert clip.read_bytes() == before
    # The same through a symlink, and a folder whose outputs would land on its photos.
    link = tmp_path / "link.mp4"
    link.symlink_to(clip)
    with pytest.raises(errors.OutputExistsError, match="resolves to the input"):
        infer_lib.run(str(trained["workdir"]), str(clip), str(link))
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), cv2.cvtColor(_face_rgb(), cv2.COLOR_RGB2BGR))
    listing = {p.name: p.read_bytes() for p in photos.iterdir()}
    with pytest.raises(errors.OutputExistsError, match="input folder"):
        infer_lib.run(str(trained["workdir"]), str(photos), str(photos))
    with pytest.raises(errors.OutputExistsError, match="the input"):
        infer_lib.run(str(trained["workdir"]), str(photos / "a.png"), str(photos / "a.png"))
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == listing
    assert clip.read_bytes() == before


def test_failed_video_run_leaves_no_output_file(tmp_path):
    clip = _face_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    # Two warm-up calls, then the model dies on the third frame.
    with pytest.raises(RuntimeError, match="the model crashed"):
        infer_lib.process_video(_Painter(fail_on_call=5), str(clip), str(out / "clip.mp4"),
                                side_by_side_out=True, log=lambda s: None)
    assert _listing(out) == []  # no half-written video under any name


def test_atomic_file_keeps_the_old_content_when_writing_fails(tmp_path, monkeypatch):
    from deocc_jax.io import atomic
    path = tmp_path / "photo.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(path), overwrite=True) as f:
            f.write(b"half of the new ")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and _listing(tmp_path) == ["photo.png"]
    atomic.write_bytes(str(path), b"new", overwrite=True)
    assert path.read_bytes() == b"new" and _listing(tmp_path) == ["photo.png"]
    # Folders: replaced only when asked, by an atomic exchange or (where the OS
    # cannot) by moving the old one aside first; nothing is left behind either way.
    for can_exchange in (True, False):
        final, staged = tmp_path / "v" / "7", tmp_path / "v" / ".7.partial-1-x"
        if not final.exists():
            final.mkdir(parents=True)
            (final / "model.pb").write_bytes(b"old model")
        staged.mkdir()
        (staged / "model.pb").write_bytes(b"new model")
        with pytest.raises(errors.OutputExistsError, match="--overwrite"):
            atomic.publish_directory(str(staged), str(final))
        if not can_exchange:
            monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
        atomic.publish_directory(str(staged), str(final), replace=True)
        assert (final / "model.pb").read_bytes() == b"new model"
        assert _listing(tmp_path / "v") == ["7", "7/model.pb"]
        (final / "model.pb").write_bytes(b"old model")


# ----------------------------------------------------------------------------- 2. export --overwrite


def test_export_is_checked_before_it_gets_its_final_name(trained, tmp_path, monkeypatch):
    from deocc_jax import export_lib
    from deocc_jax.exporters import check as export_check
    out = tmp_path / "exports"
    target = out / str(N)
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = out / f".{N}.partial-{dead.pid}-abcdef"  # what a SIGKILLed export leaves
    leftover.mkdir()
    real_verify = export_check.verify_runner
    checked = []

    def spy(runner, *args, **kwargs):
        checked.append(os.path.exists(target))
        return real_verify(runner, *args, **kwargs)

    monkeypatch.setattr(export_check, "verify_runner", spy)
    meta = export_lib.export_model(str(trained["workdir"]), str(out), platforms=("cpu",),
                                   log=lambda s: None)
    assert checked == [False], "the export was checked under the name TF Serving loads"
    assert meta["exports"]["saved_model"]["self_check"]["batches"] and (target / "saved_model.pb").is_file()
    assert _listing(out)[0] == str(N) and not leftover.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # --overwrite with a new export that fails its check: the old one stays served.
    old = {p: (target / p).read_bytes() for p in _listing(target) if (target / p).is_file()}

    def failing(runner, *args, **kwargs):
        assert {p: (target / p).read_bytes() for p in old} == old  # still in place while checking
        raise export_check.ExportCheckError("differs from the JAX model (injected)")

    monkeypatch.setattr(export_check, "verify_runner", failing)
    with pytest.raises(export_check.ExportCheckError):
        export_lib.export_model(str(trained["workdir"]), str(out), platforms=("cpu",),
                                overwrite=True, log=lambda s: None)
    assert {p: (target / p).read_bytes() for p in _listing(target) if (target / p).is_file()} == old
    assert (out / f"{N}.failed_check" / "saved_model.pb").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- 3. workdir lock


def test_second_trainer_is_refused_and_a_stale_lock_reported(data_dir, tmp_path):
    workdir = tmp_path / "run"
    flags = dict(num_train_steps=100000, checkpoint_every_steps=2, eval_every_steps=0,
                 log_every_steps=1000)
    first = subprocess.Popen(pf.train_command(workdir, data_dir, **flags), cwd=pf.REPO,
                             env=pf.subprocess_env(num_devices=1), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (workdir / "checkpoints" / "2").is_dir():
            assert first.poll() is None and time.time() < deadline, "the first trainer did not start"
            time.sleep(0.2)
        # A second trainer on the same workdir (the first one keeps going).
        second = subprocess.run(pf.train_command(workdir, data_dir, **{**flags, "num_train_steps": 2}),
                                cwd=pf.REPO, env=pf.subprocess_env(num_devices=1),
                                capture_output=True, text=True, timeout=300)
        _assert_one_line_error(second, "in use by another trainer", f"pid {first.pid}",
                               "deocc.lock")
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # SIGKILLed: its lock file stays, without the flock. On this host that proves the
    # holder is gone: the next trainer takes the workdir over, naming the old holder.
    from deocc_jax.io import workdir_lock
    with workdir_lock.WorkdirLock(str(workdir)) as lock:
        assert lock.previous["pid"] == first.pid
        assert workdir_lock.read_holder(str(workdir))["pid"] == os.getpid()
    assert not (workdir / workdir_lock.LOCK_FILE).exists()


def test_lock_held_from_another_host_is_not_taken_silently(tmp_path):
    from deocc_jax.io import workdir_lock
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
        {"host": "some-other-host", "pid": 1, "started": "2026-11-25T10:00:00+00:00"}))
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match="pid 1 on host some-other-host .*cannot be checked.*--break_lock"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    lock = workdir_lock.WorkdirLock(str(tmp_path), break_lock=True).acquire()
    try:  # a live lock in this process is never broken, not even with break_lock
        with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by another trainer"):
            workdir_lock.WorkdirLock(str(tmp_path), break_lock=True).acquire()
    finally:
        lock.release()


# ----------------------------------------------------------------------------- 4. config.json


def test_refused_resume_leaves_config_json_untouched(trained, data_dir, tmp_path):
    workdir = _copy(trained["workdir"], tmp_path)
    before = (workdir / "config.json").read_bytes()
    other = _config(data_dir, **{"model.generator.base_width": 16})
    with pytest.raises(errors.UserError, match="different model config"):
        train_lib.train_and_evaluate(other, str(workdir))
    assert (workdir / "config.json").read_bytes() == before
    # As a binary: one line, no traceback, still untouched.
    proc = _run_binary("deocc_jax.train", "--config=configs/tiny.py", f"--config.data_dir={data_dir}",
                       f"--workdir={workdir}", "--config.model.generator.base_width=16")
    _assert_one_line_error(proc, "different model config")
    assert (workdir / "config.json").read_bytes() == before


# ----------------------------------------------------------------------------- 6. checkpoint integrity


def test_flipped_byte_is_caught_quarantined_and_previous_checkpoint_used(trained, data_dir, tmp_path):
    workdir = _copy(trained["workdir"], tmp_path)
    for step in (N - 2, N):  # every checkpoint was written with its checksums
        recorded = json.loads((workdir / "checkpoints" / str(step) / "deocc_checksums.json").read_text())
        assert {"g", "ema", "g_opt", "d", "d_opt", "data", "config"} <= set(recorded["items"])
    flipped = _flip_byte(workdir / "checkpoints" / str(N) / "g")
    setup = train_lib.build_setup(_config(data_dir), sharding.make_mesh())
    ckpt = checkpointing.Checkpointer(str(workdir))
    try:
        step, _ = ckpt.restore_latest_valid(train_lib.abstract_items(setup))
    finally:
        ckpt.close()
    assert step == N - 2
    corrupt = list((workdir / "checkpoints").glob(f"{N}.corrupt-*"))
    assert len(corrupt) == 1 and (corrupt[0] / flipped.relative_to(workdir / "checkpoints" / str(N))).exists()


def test_nan_message_names_only_a_checkpoint_that_restored_clean(trained, data_dir, tmp_path,
                                                                monkeypatch):
    # The restored state holds a NaN, as a damaged file can produce.
    real = train_lib.state_from_items

    def poisoned(setup, step, items):
        state = real(setup, step, items)
        params = jax.tree.map(lambda x: x * np.float32("nan"), state.g.params)
        return state.replace(g=state.g.replace(params=params))

    monkeypatch.setattr(train_lib, "state_from_items", poisoned)
    config = _config(data_dir, num_train_steps=N + 2, log_every_steps=1, eval_every_steps=0)
    unverified = _copy(trained["workdir"], tmp_path, "old")
    # Step N as an older deocc wrote it: nothing to verify it with.
    (unverified / "checkpoints" / str(N) / "deocc_checksums.json").unlink(missing_ok=True)
    with pytest.raises(FloatingPointError) as info:
        train_lib.train_and_evaluate(config, str(unverified))
    message = str(info.value)
    assert f"NaN/Inf at step {N + 1}" in message
    assert "last good checkpoint" not in message and "no checkpoint is known to be good" in message
    assert isinstance(info.value, errors.UserError)  # one line from the binary
    # Verified at restore: that one is named (the NaN came after it).
    verified = _copy(trained["workdir"], tmp_path, "new")
    with pytest.raises(FloatingPointError, match=f"the last good checkpoint is step {N} in "):
        train_lib.train_and_evaluate(config, str(verified))


def test_corrupt_ema_is_reported_as_a_corrupt_checkpoint(trained, tmp_path):
    workdir = _copy(trained["workdir"], tmp_path)
    _flip_byte(workdir / "checkpoints" / str(N) / "ema")
    with pytest.raises(errors.UserError, match=rf"checkpoint .*/{N} is corrupt: .*ema/.*SHA-256"):
        loading.load_model(str(workdir))
    assert loading.load_model(str(workdir), N - 2).step == N - 2  # the others still load
    proc = _run_binary("deocc_jax.export", f"--model={workdir}", f"--output_dir={tmp_path / 'e'}")
    line = _assert_one_line_error(proc, "is corrupt", "ema")
    assert "differs from the JAX" not in line and not (tmp_path / "e" / str(N)).exists()


# ----------------------------------------------------------------------------- 7. decoding like prep


def test_truncated_jpeg_is_rejected_like_prep_does(trained, tmp_path):
    from deocc_jax.io import images
    photos = tmp_path / "in"
    photos.mkdir()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(_face_rgb(), cv2.COLOR_RGB2BGR))
    (photos / "good.jpg").write_bytes(jpeg.tobytes())
    (photos / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) * 6 // 10])
    with pytest.raises(images.DecodeError) as prep_says:
        images.read_image(str(photos / "cut.jpg"))
    out = tmp_path / "out"
    with pytest.raises(errors.UserError, match=r"cut\.jpg: unreadable"):
        infer_lib.process_photos(_Painter(), str(photos / "cut.jpg"), str(out), log=lambda s: None)
    assert not out.exists() or _listing(out) == []
    # In a folder: the good photo is restored, the cut one listed with prep's reason.
    lines = []
    reports = infer_lib.process_photos(_Painter(), str(photos), str(out), log=lines.append)
    status = {os.path.basename(r["input"]): (r["status"], r.get("reason")) for r in reports}
    assert status == {"good.jpg": ("restored", None), "cut.jpg": ("rejected", prep_says.value.reason)}
    assert _listing(out) == ["good.png"]
    assert "1 restored, 0 without a face (copied), 1 rejected (unreadable)" in lines[-1]
    # The binary: the good photo is done, then one line and a non-zero exit.
    proc = _run_binary("deocc_jax.infer", f"--model={trained['workdir']}", f"--input={photos}",
                       f"--output={tmp_path / 'o2'}")
    _assert_one_line_error(proc, "1 of 2 photo(s) rejected", "cut.jpg: unreadable")
    assert _listing(tmp_path / "o2") == ["good.png"]


def test_truncated_video_is_reported(tmp_path):
    src = _face_video(tmp_path / "full.mp4", frames=24, faststart=True)
    with av.open(str(src)) as c:  # cut inside the 12th frame's data
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size][12]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[:pos + 4])
    lines = []
    stats = infer_lib.process_video(_Painter(), str(cut), str(tmp_path / "out"), log=lines.append)
    assert 6 <= stats["frames"] < 24 and stats["frames_expected"] == 24
    assert stats["truncation"].startswith(f"{cut}: decoded {stats['frames']} of 24 frames")
    assert any(line.startswith("warning: ") and "decoded" in line for line in lines)
    full = infer_lib.process_video(_Painter(), str(src), str(tmp_path / "out2"), log=lambda s: None)
    assert full["frames"] == 24 and full["truncation"] is None


def test_rgba_photo_keeps_its_alpha(tmp_path):
    rgb = _face_rgb()
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    src = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src)
    reports = infer_lib.process_photos(_Painter(), str(src), str(tmp_path / "out"), log=lambda s: None)
    assert reports[0]["status"] == "restored"
    out = np.asarray(Image.open(reports[0]["output"]))
    assert out.shape == rgb.shape[:2] + (4,)
    np.testing.assert_array_equal(out[..., 3], alpha)
    assert np.any(out[..., :3] != rgb)  # the face was painted (restored)


# ----------------------------------------------------------------------------- 8. empty validation split


def test_empty_validation_split_warns_and_best_falls_back(trained, caplog):
    assert trained["result"]["step"] == N and trained["result"]["eval"] == {}
    assert any("split" in m and "is empty" in m and "without validation" in m
               for m in trained["warnings"]), trained["warnings"]
    with caplog.at_level("WARNING"):
        model = loading.load_model(str(trained["workdir"]), "best")
    assert model.step == N
    assert any("--checkpoint=best" in r.getMessage() and f"using the latest, step {N}" in
               r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 9/11. one line each


def test_errors_read_right_and_come_without_traceback(trained, data_dir, tmp_path):
    # Infer into a read-only folder: named as such, not as a codec problem (#11).
    clip = _face_video(tmp_path / "clip.mp4", frames=3)
    with _read_only_folder(tmp_path / "ro") as ro:
        proc = _run_binary("deocc_jax.infer", f"--model={trained['workdir']}", f"--input={clip}",
                           f"--output={ro / 'out.mp4'}")
        line = _assert_one_line_error(proc, str(ro), "not writable")
        assert "codec" not in line
    # evaluate --batch_size=0 (#11).
    proc = _run_binary("deocc_jax.evaluate", f"--model={trained['workdir']}", f"--data_dir={data_dir}",
                       "--split=train", "--batch_size=0", "--noface_metrics")
    _assert_one_line_error(proc, "--batch_size=0", "must be a positive")


# ----------------------------------------------------------------------------- 12. pixel limit


def test_infer_has_the_pixel_limit_of_prep(tmp_path):
    from deocc_jax.io import images
    big = tmp_path / "big.png"
    side = int(np.sqrt(images.DEFAULT_MAX_PIXELS)) + 8  # just over the limit
    Image.new("L", (side, side)).save(big)
    with pytest.raises(images.DecodeError) as prep_says:
        images.read_image(str(big))
    with pytest.raises(images.DecodeError) as infer_says:
        infer_lib.process_photos(_Painter(), str(big), str(tmp_path / "out"), log=lambda s: None)
    assert infer_says.value.reason == prep_says.value.reason == images.TOO_LARGE
    with pytest.raises(images.DecodeError, match="too_large"):  # and a lower limit is honoured
        infer_lib.process_photos(_Painter(), _small_png(tmp_path), str(tmp_path / "out"),
                                 max_pixels=100, log=lambda s: None)
    assert infer_lib.DEFAULT_MAX_PIXELS == images.DEFAULT_MAX_PIXELS  # one constant, one flag default


def _small_png(tmp_path):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), cv2.cvtColor(_face_rgb(64), cv2.COLOR_RGB2BGR))
    return str(path)
