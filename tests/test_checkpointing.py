"""Checkpoints: exact resume after SIGKILL, corrupt-latest fallback, SIGTERM, fresh-process restore."""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deocc_jax.evaluation import eval_lib
from deocc_jax.training import checkpointing, sharding, steps, train_lib
from deocc_jax.io import workdir_lock
from tests import pairs_fixture as pf
from deocc_jax import errors
from deocc_jax.artifacts import loading


N = 16          # steps of the reference run
CKPT_EVERY = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, faces_dir):
    return pf.tiny_dataset(tmp_path_factory, faces_dir)


def _config(data_dir, **kw):
    base = {"num_train_steps": N, "checkpoint_every_steps": CKPT_EVERY, "eval_every_steps": 0,
            "log_every_steps": 4, "keep_checkpoints": 20}
    base.update(kw)
    return pf.tiny_config(data_dir, **base)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """N steps in one uninterrupted in-process run."""
    workdir = tmp_path_factory.mktemp("reference")
    train_lib.train_and_evaluate(_config(data_dir), str(workdir))
    return workdir


def _restore_all(workdir, step):
    """Every saved array of a checkpoint as numpy, keyed by item/path."""
    setup = train_lib.build_setup(_config(str(workdir)), sharding.make_mesh())
    state = pf.load_train_state(setup, str(workdir), step)
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(train_lib.state_items(state)))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    diffs = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diffs, f"{len(diffs)} arrays differ, e.g. {diffs[:3]}"


def _wait_for_checkpoint(directory: pathlib.Path, step: int, proc, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (directory / str(step)).is_dir():  # orbax renames a step dir into place when complete
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.returncode}\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint {step} after {timeout} s")


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(reference, data_dir, tmp_path):
    workdir = tmp_path / "killed"
    cmd = pf.train_command(workdir, data_dir, num_train_steps=N, checkpoint_every_steps=CKPT_EVERY,
                           eval_every_steps=0, log_every_steps=4, keep_checkpoints=20)
    proc = subprocess.Popen(cmd, cwd=pf.REPO, env=pf.subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(workdir / "checkpoints", CKPT_EVERY, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    killed_at = ckpt.latest_step()
    ckpt.close()
    assert CKPT_EVERY <= killed_at < N, f"the run was not interrupted mid-way (latest {killed_at})"

    # The killed trainer could not release its workdir lock; its free flock proves it is
    # gone, so the same command resumes.
    assert workdir_lock.read_holder(str(workdir))["pid"] == proc.pid
    result = train_lib.train_and_evaluate(_config(data_dir), str(workdir))
    assert result["step"] == N
    _assert_identical(_restore_all(reference, N), _restore_all(workdir, N))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_skipped(reference, data_dir, tmp_path, caplog):
    workdir = tmp_path / "corrupt"
    shutil.copytree(reference, workdir)
    ckpt_dir = workdir / "checkpoints"
    # Corrupt the newest checkpoint: truncate every data file of the generator item.
    for f in (ckpt_dir / str(N) / "g").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    # And leave a half-written save of a later step, as a crash mid-save would.
    (ckpt_dir / f"{N + 2}.orbax-checkpoint-tmp-1234").mkdir()
    (ckpt_dir / f"{N + 2}.orbax-checkpoint-tmp-1234" / "junk").write_text("partial")

    with caplog.at_level("WARNING"):
        result = train_lib.train_and_evaluate(_config(data_dir), str(workdir))
    assert result["step"] == N
    assert any(f"checkpoints/{N} cannot be restored" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    assert list(ckpt_dir.glob(f"{N}.corrupt-*")), "the corrupt checkpoint was not moved aside"
    # Resumed from N - 2 and recomputed step N exactly.
    _assert_identical(_restore_all(reference, N), _restore_all(workdir, N))


def test_checkpoints_of_another_config_are_not_touched(reference, data_dir, tmp_path):
    workdir = tmp_path / "other"
    shutil.copytree(reference, workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(RuntimeError, match="different model config"):
        train_lib.train_and_evaluate(_config(data_dir, **{"model.generator.base_width": 16}),
                                     str(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_sigterm_saves_and_exits(data_dir, tmp_path):
    workdir = tmp_path / "term"
    cmd = pf.train_command(workdir, data_dir, num_train_steps=100000, checkpoint_every_steps=1000,
                           eval_every_steps=0, log_every_steps=1000)
    proc = subprocess.Popen(cmd, cwd=pf.REPO, env=pf.subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Wait until training is under way (the first progress line would be too late).
        deadline = time.time() + 180
        while not (workdir / "config.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == train_lib.PREEMPTED_EXIT_CODE, err[-3000:]
    assert "preempted: saved checkpoint at step" in err
    ckpt = checkpointing.Checkpointer(str(workdir), read_only=True)
    steps = ckpt.all_steps()
    ckpt.close()
    assert len(steps) == 1 and 0 < steps[0] < 1000, steps


_EVAL_SCRIPT = """
import json, sys
import numpy as np
from deocc_jax import models
from deocc_jax.artifacts import loading
from deocc_jax.evaluation import metrics
from deocc_jax.data import input_pipeline
model = loading.load_model(sys.argv[1], checkpoint=int(sys.argv[2]))
config, variables = model.config, model.variables
predict = models.make_predict_fn(config)
acc = metrics.MetricAccumulator()
for batch in input_pipeline.make_eval_iterator(config.data_dir, "validation", config.batch_size):
    out = predict(variables, batch["occluded"])
    per = metrics.image_metrics(np.asarray(out["deoccluded"], np.float32) / 255.0,
                                batch["clean"].astype(np.float32) / 255.0,
                                batch["mask"].astype(np.float32) / 255.0, out["mask"])
    acc.add(per, batch["valid"])
print("RESULT" + json.dumps(acc.result()))
"""


@pytest.mark.slow
def test_checkpoint_restores_in_fresh_process_with_same_metrics(reference, data_dir):
    setup = train_lib.build_setup(_config(data_dir), sharding.make_mesh())
    state = pf.load_train_state(setup, str(reference), N)
    in_process, _ = eval_lib.validate(setup.mesh, setup.config, steps.eval_variables(state))
    # A fresh single-device process, using the inference API other tools use.
    out = subprocess.run([sys.executable, "-c", _EVAL_SCRIPT, str(reference), str(N)], cwd=pf.REPO,
                         env=pf.subprocess_env(num_devices=1), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    fresh = json.loads(out.stdout.split("RESULT")[-1])
    # The fresh process computes the pixel metrics; validation adds realism ones beside them.
    assert {"psnr", "ssim", "masked_psnr", "masked_ssim"} <= set(fresh) <= {
        k[len("val_"):] for k in in_process}
    # Outputs are uint8: 8 sharded devices and 1 device may round a few pixels to the next grey
    # level (measured: 3e-5 relative on masked SSIM); a wrong checkpoint is off by far more.
    for k, v in fresh.items():
        assert v == pytest.approx(in_process[f"val_{k}"], rel=1e-4, abs=1e-6), k
    assert 0.0 < fresh["ssim"] < 1.0


def test_best_and_latest_resolution(reference, caplog):
    ckpt = checkpointing.Checkpointer(str(reference), read_only=True)
    try:
        assert ckpt.resolve("latest") == N
        assert ckpt.resolve(4) == 4
        with pytest.raises(FileNotFoundError, match="not found"):
            ckpt.resolve(3)
        # The reference run never evaluated: "best" falls back to the latest, with a warning.
        with caplog.at_level("WARNING"):
            assert ckpt.resolve("best") == N
        assert any("--checkpoint=best" in r.getMessage() and "using the latest" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        ckpt.close()


@pytest.mark.parametrize("async_save", [False, True])
def test_best_is_the_highest_val_ssim_after_reopening(tmp_path, async_save):
    # orbax 0.12.8 dropped the metrics unless best_fn was set: "best" was always the latest.
    import ml_collections
    tree = {"w": np.zeros(3, np.float32)}
    ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2, keep_best=1, async_save=async_save)
    for step, ssim in ((1, 0.5), (2, 0.9), (3, None), (4, 0.7), (5, None)):
        ckpt.save(step, {"g": tree}, data_state=None, config=ml_collections.ConfigDict({"seed": 0}),
                  metrics=None if ssim is None else {checkpointing.BEST_METRIC: ssim})
    ckpt.close()
    reopened = checkpointing.Checkpointer(str(tmp_path), read_only=True)
    try:
        assert reopened.all_steps() == [2, 4, 5]  # the 2 latest and the best
        assert reopened.resolve("best") == 2
    finally:
        reopened.close()


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    # The quickstart's default output folder is relative; orbax refuses relative paths.
    import jax
    import ml_collections
    monkeypatch.chdir(tmp_path)
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    ckpt = checkpointing.Checkpointer("relative_workdir", async_save=False)
    ckpt.save(7, {"g": tree}, data_state=None, config=ml_collections.ConfigDict({"seed": 0}))
    ckpt.wait()
    assert (tmp_path / "relative_workdir" / "checkpoints" / "7").is_dir()
    restored = checkpointing.Checkpointer("relative_workdir", read_only=True).restore(
        7, {"g": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)})
    np.testing.assert_array_equal(np.asarray(restored["g"]["w"]), tree["w"])


# ----------------------------------------------------------------------------- integrity


RUN_STEPS = pf.EMPTY_VAL_STEPS  # of `empty_val_run` (conftest.py)


def _flip_byte(item_dir):
    """Flips one bit in the middle of the item's largest data file; the size stays the same."""
    files = [p for p in item_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return target


def test_flipped_byte_is_caught_quarantined_and_previous_checkpoint_used(empty_val_run, empty_val_data_dir,
                                                                         tmp_path):
    workdir = pf.copy_workdir(empty_val_run["workdir"], tmp_path)
    for step in (RUN_STEPS - 2, RUN_STEPS):  # every checkpoint was written with its checksums
        recorded = json.loads((workdir / "checkpoints" / str(step) / "deocc_checksums.json").read_text())
        assert {"g", "ema", "g_opt", "d", "d_opt", "data", "config"} <= set(recorded["items"])
    flipped = _flip_byte(workdir / "checkpoints" / str(RUN_STEPS) / "g")
    setup = train_lib.build_setup(pf.empty_val_config(empty_val_data_dir), sharding.make_mesh())
    ckpt = checkpointing.Checkpointer(str(workdir))
    try:
        step, _ = ckpt.restore_latest_valid(train_lib.abstract_items(setup))
    finally:
        ckpt.close()
    assert step == RUN_STEPS - 2
    corrupt = list((workdir / "checkpoints").glob(f"{RUN_STEPS}.corrupt-*"))
    kept = corrupt[0] / flipped.relative_to(workdir / "checkpoints" / str(RUN_STEPS))
    assert len(corrupt) == 1 and kept.exists()


def test_corrupt_ema_is_reported_as_a_corrupt_checkpoint(empty_val_run, tmp_path):
    workdir = pf.copy_workdir(empty_val_run["workdir"], tmp_path)
    _flip_byte(workdir / "checkpoints" / str(RUN_STEPS) / "ema")
    with pytest.raises(errors.UserError, match=rf"checkpoint .*/{RUN_STEPS} is corrupt: .*ema/.*SHA-256"):
        loading.load_model(str(workdir))
    assert loading.load_model(str(workdir), RUN_STEPS - 2).step == RUN_STEPS - 2  # the others still load
    proc = pf.run_binary("deocc_jax.export", f"--model={workdir}", f"--output_dir={tmp_path / 'e'}")
    line = pf.assert_one_line_error(proc, "is corrupt", "ema")
    assert "differs from the JAX" not in line and not (tmp_path / "e" / str(RUN_STEPS)).exists()
