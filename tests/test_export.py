"""SavedModel export: matches JAX on real faces at batch 1 and 3; bad requests fail clearly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from deocc_jax import models
from deocc_jax.artifacts import loading
from deocc_jax.data import input_pipeline
from deocc_jax.artifacts.exporters import check as export_check
from deocc_jax.artifacts.exporters import saved_model
from deocc_jax.io.saved_model_runner import SavedModelRunner
import os
import subprocess
from tests import pairs_fixture as pf


@pytest.fixture(scope="module")
def runner(quickstart_run):
    return SavedModelRunner(quickstart_run["outputs"]["export"])


def test_round_trip_matches_jax_on_real_faces(quickstart_run, runner):
    # Real occluded faces from the test split (aligned photos from ../shared).
    split = input_pipeline.read_examples(quickstart_run["outputs"]["dataset"], "test", [0, 1, 2])
    images = np.stack([e["occluded"] for e in split])
    model = loading.load_model(quickstart_run["outputs"]["workdir"])
    variables = model.variables
    predict = jax.jit(functools.partial(models.predict, model.config))
    for batch in (1, 3):
        got = runner(images[:batch])
        want = {k: np.asarray(v) for k, v in predict(variables, images[:batch]).items()}
        assert got["deoccluded"].dtype == np.uint8 and got["deoccluded"].shape == (batch, 32, 32, 3)
        assert got["mask"].dtype == np.float32 and got["mask"].shape == (batch, 32, 32, 1)
        diffs = export_check.compare_outputs(got, want)
        assert export_check.within_tolerance(diffs), (batch, diffs)
    # The export recorded its own check on the embedded real photos.
    check = runner.metadata["self_check"]
    assert set(check["batches"]) == {"1", "3"} and check["tolerance"] == export_check.TOLERANCE
    assert runner.metadata["resolution"] == 32 and runner.metadata["guided"] is False


@pytest.mark.parametrize("shape", [(1, 16, 16, 3), (32, 32, 3), (2, 32, 32, 4), (0, 32, 32, 3)])
def test_wrong_shape_fails_inside_the_signature(runner, shape):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"deocc: images must be uint8 \[batch, 32, 32, 3\]"):
        runner(np.zeros(shape, np.uint8))


def test_wrong_dtype_is_rejected(runner):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError), match="uint8"):
        runner(np.zeros((1, 32, 32, 3), np.float32))


def _toy_predict(variables, images, masks):
    """A guided "model" with the real signature: fills the masked pixels with a colour."""
    m = masks.astype(jnp.float32) / 255.0
    x = images.astype(jnp.float32)
    out = x * (1 - m) + variables["fill"] * m
    return {"deoccluded": jnp.round(out).astype(jnp.uint8), "mask": m}


def test_guided_export_takes_masks_and_checks_them(tmp_path):
    variables = {"fill": jnp.array([200.0, 100.0, 50.0], jnp.float32)}
    path = saved_model.export_saved_model(_toy_predict, variables, str(tmp_path), resolution=16,
                                         guided=True, version=3, platforms=("cpu",))
    assert path.endswith("/3")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = export_check.check_masks(3, 16)
    check = export_check.verify_runner(
        SavedModelRunner(str(tmp_path)), lambda x, m: _toy_predict(variables, x, m), images, masks)
    assert check["batches"]["3"]["deoccluded_max_abs"] == 0
    runner = SavedModelRunner(str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="masks must be uint8 .* same batch"):
        runner(images, masks[:2])
    # A reference that disagrees is caught by the self-check.
    with pytest.raises(export_check.ExportCheckError, match="differs from the JAX model"):
        export_check.verify_runner(
            SavedModelRunner(str(tmp_path)), lambda x, m: {**_toy_predict(variables, x, m),
                                         "deoccluded": 255 - _toy_predict(variables, x, m)["deoccluded"]},
            images, masks)


def test_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a deocc export"):
        SavedModelRunner(str(tmp_path))


@pytest.mark.slow
def test_export_binary_writes_checked_onnx_and_litert_and_infer_runs_them(quickstart_run, tmp_path):
    """`export --format=onnx,tflite`: each file checked against JAX before it is published,
    the quantised variant's cost measured on the test split, and `infer` runs the files."""
    import json
    import os
    import subprocess
    import sys

    from deocc_jax.artifacts.exporters import onnx as onnx_export
    from deocc_jax.artifacts.exporters import tflite as tflite_export
    from tests import pairs_fixture as pf

    out = tmp_path / "exports"
    proc = subprocess.run(
        [sys.executable, "-m", "deocc_jax.export", f"--model={quickstart_run['outputs']['workdir']}",
         f"--output_dir={out}", "--format=onnx,tflite", "--quantize=none,dynamic_int8",
         f"--data_dir={quickstart_run['outputs']['dataset']}"],
        cwd=pf.REPO, env=pf.subprocess_env(num_devices=1), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = quickstart_run["steps"]
    onnx_path, tfl, int8 = (out / f"deocc-{step}.onnx", out / f"deocc-{step}.tflite",
                            out / f"deocc-{step}.dynamic_int8.tflite")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (onnx_path, tfl, int8))
    assert onnx_export.read_metadata(str(onnx_path))["self_check"]["batches"]["3"][
        "deoccluded_max_abs"] <= 1
    cost = tflite_export.read_metadata(str(int8))["self_check"]["test_masked_psnr"]
    assert cost["measured"] and cost["change_db"] == pytest.approx(cost["export_db"] - cost["jax_db"])
    assert f"exported onnx: {onnx_path}" in proc.stdout
    # infer runs the ONNX file with the same detection, alignment and blending.
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "deocc_jax.infer", f"--model={onnx_path}",
         f"--input={quickstart_run['outputs']['demo_input']}", f"--output={tmp_path / 'o'}",
         f"--report={report}"],
        cwd=pf.REPO, env=pf.subprocess_env(num_devices=1), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(report))[0]["status"] == "restored"
    assert os.path.isfile(tmp_path / "o" / "demo_occluded.png")


# ----------------------------------------------------------------------------- checked, then named


RUN_STEPS = pf.EMPTY_VAL_STEPS  # of `empty_val_run` (conftest.py)


def test_export_is_checked_before_it_gets_its_final_name(empty_val_run, tmp_path, monkeypatch):
    from deocc_jax.artifacts import export_lib
    from deocc_jax.artifacts.exporters import check as export_check
    out = tmp_path / "exports"
    target = out / str(RUN_STEPS)
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = out / f".{RUN_STEPS}.partial-{dead.pid}-abcdef"  # what a SIGKILLed export leaves
    leftover.mkdir()
    real_verify = export_check.verify_runner
    checked = []

    def spy(runner, *args, **kwargs):
        checked.append(os.path.exists(target))
        return real_verify(runner, *args, **kwargs)

    monkeypatch.setattr(export_check, "verify_runner", spy)
    meta = export_lib.export_model(str(empty_val_run["workdir"]), str(out), platforms=("cpu",),
                                   log=lambda s: None)
    assert checked == [False], "the export was checked under the name TF Serving loads"
    assert meta["exports"]["saved_model"]["self_check"]["batches"] and (target / "saved_model.pb").is_file()
    assert pf.listing(out)[0] == str(RUN_STEPS) and not leftover.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # --overwrite with a new export that fails its check: the old one stays served.
    old = {p: (target / p).read_bytes() for p in pf.listing(target) if (target / p).is_file()}

    def failing(runner, *args, **kwargs):
        assert {p: (target / p).read_bytes() for p in old} == old  # still in place while checking
        raise export_check.ExportCheckError("differs from the JAX model (injected)")

    monkeypatch.setattr(export_check, "verify_runner", failing)
    with pytest.raises(export_check.ExportCheckError):
        export_lib.export_model(str(empty_val_run["workdir"]), str(out), platforms=("cpu",),
                                overwrite=True, log=lambda s: None)
    assert {p: (target / p).read_bytes() for p in pf.listing(target) if (target / p).is_file()} == old
    assert (out / f"{RUN_STEPS}.failed_check" / "saved_model.pb").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
