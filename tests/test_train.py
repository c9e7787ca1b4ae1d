"""Training: device-count invariance, overfitting real pairs, clear errors, NaN stop."""

import json

import jax
import numpy as np
import pytest

from deocc_jax import models
from deocc_jax.artifacts import loading
from deocc_jax.training import checkpointing, sharding, steps, train_lib
from deocc_jax.data import input_pipeline
from tests import pairs_fixture as pf
import signal
import subprocess
from deocc_jax import errors



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, faces_dir):
    return pf.tiny_dataset(tmp_path_factory, faces_dir)


def _losses(config, mesh, batches):
    setup = train_lib.build_setup(config, mesh)
    state = setup.init()
    out = []
    for b in batches:
        state, m = setup.train_step(state, sharding.put_batch(setup.mesh, b))
        out.append(jax.device_get(m))
    return out, jax.device_get(state.g.params)


def test_8_devices_match_1_device(data_dir):
    assert jax.device_count() == 8, "conftest should provide 8 fake CPU devices"
    config = pf.tiny_config(data_dir, **{"model.generator.norm": "batch"})  # cross-device BN stats
    it = input_pipeline.make_train_iterator(config)
    batches = [next(it) for _ in range(3)]
    one, p1 = _losses(config, sharding.make_mesh(jax.devices()[:1]), batches)
    eight, p8 = _losses(config, sharding.make_mesh(), batches)
    # FSDP-style: large arrays sharded over the 8 devices instead of replicated.
    fsdp, _ = _losses(pf.tiny_config(data_dir, fsdp_min_params=1000,
                                     **{"model.generator.norm": "batch"}), sharding.make_mesh(),
                      batches)
    for step, (a, b, f) in enumerate(zip(one, eight, fsdp)):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=f"{k} step {step}")
            np.testing.assert_allclose(a[k], f[k], rtol=1e-3, atol=1e-5, err_msg=f"fsdp {k} {step}")
    assert one[0]["g_loss"] != one[-1]["g_loss"], "training did not change the losses"
    # No parameter has a gradient that is only rounding noise (no bias before a norm), so
    # Adam has nothing to amplify: parameters agree to float rounding (measured 1.2e-7;
    # with the biases it took atol 3e-3, a few steps of lr).
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _masked_l1(a, b, mask):
    m = (mask > 127).astype(np.float32)
    return float((np.abs(a.astype(np.float32) - b.astype(np.float32)) * m).sum() / (m.sum() * 3))


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, faces_dir):
    """tiny trained on 8 real pairs (one batch) for a few hundred steps."""
    data = pf.tiny_dataset(tmp_path_factory, faces_dir, splits={"train": 8, "validation": 8})
    config = pf.tiny_config(data, num_train_steps=200, checkpoint_every_steps=200,
                            eval_every_steps=200, log_every_steps=100, **{
                                "data.flip_prob": 0.0, "data.color_jitter": 0.0,
                                "optim.ema_decay": 0.0, "eval_split": "train"})
    workdir = tmp_path_factory.mktemp("overfit")
    result = train_lib.train_and_evaluate(config, str(workdir))
    return config, workdir, result


@pytest.mark.slow
def test_tiny_overfits_real_pairs(overfit_run):
    config, workdir, result = overfit_run
    loaded = loading.load_model(str(workdir), "latest")
    assert loaded.config.resolution == config.resolution and loaded.step == 200
    variables = loaded.variables
    predict = models.make_predict_fn(loaded.config)
    before, after = [], []
    for batch in input_pipeline.make_eval_iterator(config.data_dir, "train", config.batch_size):
        out = jax.device_get(predict(variables, batch["occluded"]))
        before.append(_masked_l1(batch["occluded"], batch["clean"], batch["mask"]))
        after.append(_masked_l1(out["deoccluded"], batch["clean"], batch["mask"]))
        outside = batch["mask"][..., 0] == 0
        # Compositing keeps the visible face: outside the true mask the output
        # differs from the input only where the predicted mask is on.
        np.testing.assert_array_less(np.abs(out["deoccluded"].astype(int) - batch["occluded"])[outside]
                                     .mean(), 10.0)
    print("masked L1 after/before:", np.mean(after), np.mean(before), result["eval"])
    assert np.mean(after) < 0.35 * np.mean(before), (np.mean(after), np.mean(before))
    assert result["eval"]["val_mask_iou"] > 0.6, result["eval"]
    samples = list((workdir / "samples").glob("step_*.png"))
    assert samples and (workdir / "tensorboard").is_dir()
    assert json.loads((workdir / "config.json").read_text())["resolution"] == 32


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(overfit_run, tmp_path):
    config, workdir, _ = overfit_run
    import shutil
    shutil.copytree(workdir, tmp_path / "w")
    config = pf.tiny_config(config.data_dir, num_train_steps=204, checkpoint_every_steps=1,
                            eval_every_steps=0, log_every_steps=100, **{
                                "loss.l1_weight": float("nan"), "optim.ema_decay": 0.0})
    with pytest.raises(FloatingPointError, match="NaN/Inf at step 201"):
        train_lib.train_and_evaluate(config, str(tmp_path / "w"))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "w"), read_only=True)
    assert ckpt.latest_step() == 200
    ckpt.close()


def test_clear_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_lib.train_and_evaluate(pf.tiny_config(tmp_path / "missing"), str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"resolution=64 .* prepared at 32 px"):
        train_lib.train_and_evaluate(pf.tiny_config(data_dir, resolution=64), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="batch_size=12: must be a positive multiple of the device count 8"):
        train_lib.train_and_evaluate(pf.tiny_config(data_dir, batch_size=12), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="data_dir is not set"):
        train_lib.train_and_evaluate(pf.tiny_config(""), str(tmp_path / "w"))


def test_input_pipeline_is_deterministic_and_sharded(data_dir):
    config = pf.tiny_config(data_dir, batch_size=8)
    it = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    following = next(it)
    it2 = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["clean"], following["clean"])
    # Two processes' halves concatenate to the single-process global batch.
    halves = [next(input_pipeline.make_train_iterator(config, process_index=p, process_count=2))
              for p in range(2)]
    for k in ("clean", "occluded", "mask", "alpha"):
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), first[0][k])
    # Augmentation keeps clean == occluded outside the mask.
    for b in first:
        outside = b["mask"][..., 0] == 0
        np.testing.assert_array_equal(b["clean"][outside], b["occluded"][outside])
    # Epochs are reshuffled: 16 examples, batches 0-1 are epoch 0, 2-3 epoch 1.
    it3 = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
    epoch = [next(it3)["clean"] for _ in range(4)]
    assert not np.array_equal(epoch[0], epoch[2])


def test_schedules():
    from configs import common
    o = common.optimizer(1.0, schedule="linear_decay")
    s = steps.make_schedule(o, 100)
    assert float(s(10)) == 1.0 and float(s(75)) == pytest.approx(0.5) and float(s(100)) == 0.0
    o = common.optimizer(1.0, schedule="cosine")
    o.warmup_steps = 10
    s = steps.make_schedule(o, 100)
    assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0) and float(s(100)) < 1e-6


# ----------------------------------------------------------------------------- faults


RUN_STEPS = pf.EMPTY_VAL_STEPS  # of `empty_val_run` (conftest.py)


def test_refused_resume_leaves_config_json_untouched(empty_val_run, empty_val_data_dir, tmp_path):
    workdir = pf.copy_workdir(empty_val_run["workdir"], tmp_path)
    before = (workdir / "config.json").read_bytes()
    other = pf.empty_val_config(empty_val_data_dir, **{"model.generator.base_width": 16})
    with pytest.raises(errors.UserError, match="different model config"):
        train_lib.train_and_evaluate(other, str(workdir))
    assert (workdir / "config.json").read_bytes() == before
    # As a binary: one line, no traceback, still untouched.
    proc = pf.run_binary("deocc_jax.train", "--config=configs/tiny.py",
                         f"--config.data_dir={empty_val_data_dir}",
                       f"--workdir={workdir}", "--config.model.generator.base_width=16")
    pf.assert_one_line_error(proc, "different model config")
    assert (workdir / "config.json").read_bytes() == before


def test_nan_message_names_only_a_checkpoint_that_restored_clean(empty_val_run, empty_val_data_dir, tmp_path,
                                                                 monkeypatch):
    # The restored state holds a NaN, as a damaged file can produce.
    real = train_lib.state_from_items

    def poisoned(setup, step, items):
        state = real(setup, step, items)
        params = jax.tree.map(lambda x: x * np.float32("nan"), state.g.params)
        return state.replace(g=state.g.replace(params=params))

    monkeypatch.setattr(train_lib, "state_from_items", poisoned)
    config = pf.empty_val_config(empty_val_data_dir, num_train_steps=RUN_STEPS + 2, log_every_steps=1,
                                 eval_every_steps=0)
    unverified = pf.copy_workdir(empty_val_run["workdir"], tmp_path, "old")
    # Step RUN_STEPS as an older deocc wrote it: nothing to verify it with.
    (unverified / "checkpoints" / str(RUN_STEPS) / "deocc_checksums.json").unlink(missing_ok=True)
    with pytest.raises(FloatingPointError) as info:
        train_lib.train_and_evaluate(config, str(unverified))
    message = str(info.value)
    assert f"NaN/Inf at step {RUN_STEPS + 1}" in message
    assert "last good checkpoint" not in message and "no checkpoint is known to be good" in message
    assert isinstance(info.value, errors.UserError)  # one line from the binary
    # Verified at restore: that one is named (the NaN came after it).
    verified = pf.copy_workdir(empty_val_run["workdir"], tmp_path, "new")
    with pytest.raises(FloatingPointError, match=f"the last good checkpoint is step {RUN_STEPS} in "):
        train_lib.train_and_evaluate(config, str(verified))


def test_empty_validation_split_warns_and_best_falls_back(empty_val_run, caplog):
    assert empty_val_run["result"]["step"] == RUN_STEPS and empty_val_run["result"]["eval"] == {}
    assert any("split" in m and "is empty" in m and "without validation" in m
               for m in empty_val_run["warnings"]), empty_val_run["warnings"]
    with caplog.at_level("WARNING"):
        model = loading.load_model(str(empty_val_run["workdir"]), "best")
    assert model.step == RUN_STEPS
    assert any("--checkpoint=best" in r.getMessage() and f"using the latest, step {RUN_STEPS}" in
               r.getMessage() for r in caplog.records)


def test_ctrl_c_in_training_saves_like_sigterm(tmp_path, faces_dir):
    from deocc_jax.training import checkpointing
    data = pf.write_tiny_dataset(tmp_path / "data", faces_dir, splits={"train": 8})
    workdir = tmp_path / "run"
    proc = subprocess.Popen(pf.train_command(workdir, data, num_train_steps=100000,
                                             checkpoint_every_steps=1000, eval_every_steps=0,
                                             log_every_steps=1),
                            cwd=pf.REPO, env=pf.subprocess_env(num_devices=1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pf.default_sigint)
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


def test_clean_pairs_show_the_face_unoccluded_and_leave_other_streams_alone():
    rng = np.random.default_rng(0)
    ex = {"clean": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
          "occluded": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
          "mask": np.full((8, 8, 1), 255, np.uint8), "alpha": np.full((8, 8, 1), 255, np.uint8)}
    out = input_pipeline.augment(ex, np.random.default_rng(1), flip_prob=0.5, color_jitter=0.05,
                                 clean_prob=1.0)
    assert np.array_equal(out["occluded"], out["clean"])
    assert not out["mask"].any() and not out["alpha"].any()
    kept = input_pipeline.augment(ex, np.random.default_rng(1), flip_prob=0.5, color_jitter=0.05,
                                  clean_prob=1e-9)
    assert kept["mask"].all() and not np.array_equal(kept["occluded"], kept["clean"])
    # clean_prob=0 draws nothing more: the stream of an existing config is unchanged.
    old, new = np.random.default_rng(2), np.random.default_rng(2)
    input_pipeline.augment(ex, old, flip_prob=0.5, color_jitter=0.05)
    input_pipeline.augment(ex, new, flip_prob=0.5, color_jitter=0.05, clean_prob=0.0)
    assert old.random() == new.random()
