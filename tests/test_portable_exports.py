"""ONNX and LiteRT exports: run by their own runtimes with no model code, equal to JAX on real faces.

A tiny deocc generator (configs/tiny.py, 32 px, fresh weights) is exported to
ONNX and to TFLite (float32, float16, dynamic-range int8), blind and guided,
then loaded by `io.onnx_runner` / `io.tflite_runner` and compared with the JAX
model on the embedded real portraits (`sample_photos`) at batch 1 and 3.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import runtimes_lib
from configs import tiny
from deocc_jax import errors, models
from deocc_jax.faces import sample_photos
from deocc_jax.artifacts.exporters import check
from deocc_jax.artifacts.exporters import onnx as onnx_export
from deocc_jax.artifacts.exporters import tflite as tflite_export
from deocc_jax.io.onnx_runner import OnnxRunner
from deocc_jax.io.tflite_runner import TfliteRunner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"mode": "blind", "step": 7, "config": {"resolution": 32}}


def _model(mode: str):
    config = tiny.get_config()
    config.model.mode = mode
    config.model.conv_impl = "xla_conv"  # what exports use: one Conv / CONV_2D per convolution
    variables = models.init_generator(config, jax.random.key(0))
    predict = functools.partial(models.predict, config)
    jitted = jax.jit(predict)
    return config, variables, predict, lambda x, m: jitted(variables, x, m)


@pytest.fixture(scope="module")
def faces():
    """The embedded real portraits, aligned to 32 px, and lower-face masks for guided models."""
    images = sample_photos.aligned_faces(sample_photos.face_photo_paths(), 32)
    return images, check.check_masks(len(images), 32)


@pytest.fixture(scope="module")
def blind(tmp_path_factory):
    config, variables, predict, reference = _model("blind")
    out = tmp_path_factory.mktemp("blind")
    paths = {"onnx": onnx_export.export_onnx(predict, variables, str(out / "m.onnx"),
                                             resolution=32, guided=False, metadata=META)}
    for q in tflite_export.QUANTIZE_MODES:
        paths[q] = tflite_export.export_tflite(predict, variables, str(out / f"m_{q}.tflite"),
                                               resolution=32, guided=False, quantize=q,
                                               metadata=META)
    return paths, reference


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    config, variables, predict, reference = _model("guided")
    out = tmp_path_factory.mktemp("guided")
    meta = {**META, "mode": "guided"}
    paths = {"onnx": onnx_export.export_onnx(predict, variables, str(out / "g.onnx"),
                                             resolution=32, guided=True, metadata=meta),
             "tflite": tflite_export.export_tflite(predict, variables, str(out / "g.tflite"),
                                                   resolution=32, guided=True, metadata=meta)}
    return paths, reference


def test_onnx_matches_jax_on_real_faces_at_any_batch(blind, faces):
    paths, reference = blind
    images, _ = faces
    result = onnx_export.verify_onnx(paths["onnx"], reference, images, None, batch_sizes=(1, 3, 2))
    assert set(result["batches"]) == {"1", "3", "2"}
    assert all(check.within_tolerance(d) for d in result["batches"].values())
    runner = OnnxRunner(paths["onnx"])
    out = runner(images[:1])
    assert out["deoccluded"].dtype == np.uint8 and out["deoccluded"].shape == (1, 32, 32, 3)
    assert out["mask"].dtype == np.float32 and out["mask"].shape == (1, 32, 32, 1)
    # The graph itself has a symbolic batch and the stated opset.
    import onnx
    model = onnx.load(paths["onnx"])
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)]
    assert dims == [["batch", 32, 32, 3], ["batch", 32, 32, 3], ["batch", 32, 32, 1]]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.OPSET)]
    onnx.checker.check_model(model, full_check=True)


def test_tflite_float32_matches_jax_and_quantised_variants_are_measured(blind, faces):
    paths, reference = blind
    images, _ = faces
    results = {q: tflite_export.verify_tflite(paths[q], reference, images, None)
               for q in tflite_export.QUANTIZE_MODES}
    assert results["none"]["tolerance"] == check.TOLERANCE
    for q, result in results.items():
        assert result["quantize"] == q and set(result["batches"]) == {"1", "3"}
        for diffs in result["batches"].values():
            assert {"deoccluded_max_abs", "deoccluded_mean_abs", "mask_mean_abs"} <= set(diffs)
    # Quantised weights are smaller and not bit-exact; float32 is within 1 grey level.
    sizes = {q: os.path.getsize(paths[q]) for q in paths if q != "onnx"}
    assert sizes["dynamic_int8"] < sizes["float16"] < sizes["none"]
    assert results["dynamic_int8"]["batches"]["3"]["deoccluded_mean_abs"] > 0
    assert results["none"]["batches"]["3"]["deoccluded_max_abs"] <= 1
    # A batch-1 model serves batch 3 in pieces: each row equals its own batch-1 call.
    runner = TfliteRunner(paths["none"])
    assert runner.model_batch == 1
    batch = images[np.arange(3) % len(images)]
    whole = runner(batch)["deoccluded"]
    rows = np.concatenate([runner(batch[i:i + 1])["deoccluded"] for i in range(3)])
    np.testing.assert_array_equal(whole, rows)


def test_guided_exports_take_masks(guided, faces):
    paths, reference = guided
    images, masks = faces
    onnx_export.verify_onnx(paths["onnx"], reference, images, masks)
    tflite_export.verify_tflite(paths["tflite"], reference, images, masks)
    for runner in (OnnxRunner(paths["onnx"]), TfliteRunner(paths["tflite"])):
        assert runner.guided and runner.metadata["mode"] == "guided"
        with pytest.raises(errors.InvalidInputError, match="guided model: it needs masks"):
            runner(images)
        with pytest.raises(errors.InvalidInputError, match=r"masks must be uint8 \[batch, 32, 32, 1\]"):
            runner(images, masks[:1])
        # The mask is an input that matters: filling a different region changes the output.
        a = runner(images[:1], masks[:1])["deoccluded"]
        b = runner(images[:1], np.zeros_like(masks[:1]))["deoccluded"]
        assert (a != b).any()


def test_runners_load_files_without_model_code(blind, guided, faces):
    """A fresh interpreter runs both files and never imports jax, TF or deocc's model code."""
    images, masks = faces
    np.save(os.path.join(os.path.dirname(guided[0]["onnx"]), "x.npy"), images)
    script = f"""
import sys, json, numpy as np
from deocc_jax.io.onnx_runner import OnnxRunner
from deocc_jax.io.tflite_runner import TfliteRunner
x = np.load({os.path.join(os.path.dirname(guided[0]["onnx"]), "x.npy")!r})
shapes = []
for r in (OnnxRunner({blind[0]["onnx"]!r}), TfliteRunner({blind[0]["dynamic_int8"]!r})):
    out = r(x)
    shapes.append([list(out["deoccluded"].shape), str(out["mask"].dtype), r.metadata["step"]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow",
               "jax2onnx", "onnx") or (m.startswith("deocc_jax") and m not in
               ("deocc_jax", "deocc_jax.errors", "deocc_jax.io", "deocc_jax.io.portable",
                "deocc_jax.io.onnx_runner", "deocc_jax.io.tflite_runner")))
print(json.dumps({{"shapes": shapes, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(images)
    assert result["shapes"] == [[[n, 32, 32, 3], "float32", 7]] * 2
    assert result["heavy"] == []


def test_metadata_is_in_the_file_and_can_be_updated(blind, tmp_path):
    paths, _ = blind
    for path, module, runner_cls in ((paths["onnx"], onnx_export, OnnxRunner),
                                     (paths["float16"], tflite_export, TfliteRunner)):
        meta = module.read_metadata(path)
        assert meta["resolution"] == 32 and meta["guided"] is False
        assert meta["step"] == 7 and meta["config"] == {"resolution": 32}
        assert meta["format"] == ("onnx" if path.endswith(".onnx") else "tflite")
        copy = str(tmp_path / os.path.basename(path))
        with open(path, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
        module.write_metadata(copy, {**meta, "self_check": {"batches": {"1": {"x": 0}}}})
        runner = runner_cls(copy)
        assert runner.metadata["self_check"] == {"batches": {"1": {"x": 0}}}
        assert runner.metadata["step"] == 7
    assert onnx_export.read_metadata(paths["onnx"])["opset"] == onnx_export.OPSET
    assert tflite_export.read_metadata(paths["float16"])["quantize"] == "float16"


def test_verification_catches_a_model_that_differs(blind, faces):
    paths, reference = blind
    images, _ = faces

    def inverted(x, m):
        return {**reference(x, m), "deoccluded": 255 - np.asarray(reference(x, m)["deoccluded"])}

    with pytest.raises(check.ExportCheckError, match="differs from the JAX model"):
        onnx_export.verify_onnx(paths["onnx"], inverted, images, None)
    with pytest.raises(check.ExportCheckError, match="differs from the JAX model"):
        tflite_export.verify_tflite(paths["none"], inverted, images, None)
    with pytest.raises(check.ExportCheckError, match="quantised conversion is broken"):
        tflite_export.verify_tflite(paths["dynamic_int8"], inverted, images, None)


def test_masked_psnr_of_each_model_on_the_same_pairs(faces):
    images, masks = faces
    rng = np.random.default_rng(0)
    clean = images
    occluded = np.where(masks > 0, rng.integers(0, 256, images.shape, dtype=np.uint8), images)
    gray = lambda x, m: {"deoccluded": np.full_like(x, 128)}  # noqa: E731
    fns = {"input": lambda x, m: {"deoccluded": x}, "gray": gray}
    got = tflite_export.masked_psnr(fns, occluded, clean, masks, batch_size=1)
    inside = masks[..., 0] > 0
    for name, pred in (("input", occluded), ("gray", np.full_like(occluded, 128))):
        want = np.mean([10 * np.log10(1 / np.mean(((p[k].astype(float) - c[k]) / 255.0) ** 2))
                        for p, c, k in zip(pred, clean, inside)])
        assert got[name] == pytest.approx(want, abs=1e-3)
    assert got["gray"] != pytest.approx(got["input"], abs=0.1)
    with pytest.raises(ValueError, match="no image has a non-empty mask"):
        tflite_export.masked_psnr(fns, occluded, clean, np.zeros_like(masks))


def test_bad_files_are_clear_errors(tmp_path, faces):
    images, _ = faces
    for ext, cls, what in ((".onnx", OnnxRunner, "not an ONNX model onnxruntime can load"),
                           (".tflite", TfliteRunner, "not a TFLite model")):
        missing = str(tmp_path / f"missing{ext}")
        with pytest.raises(errors.InputNotFoundError, match="no such"):
            cls(missing)
        junk = tmp_path / f"junk{ext}"
        junk.write_bytes(b"this is not a model" * 10)
        with pytest.raises(errors.InvalidInputError, match=f"{junk}: {what}"):
            cls(str(junk))
    # A valid ONNX model that deocc did not write.
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["deoccluded"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, [1])],
                              [helper.make_tensor_value_info("deoccluded", TensorProto.UINT8, [1])])
    foreign = str(tmp_path / "foreign.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8),
              foreign)
    with pytest.raises(errors.InvalidInputError, match="without deocc metadata"):
        OnnxRunner(foreign)


def test_wrong_requests_are_rejected_before_the_runtime(blind):
    paths, _ = blind
    for runner in (OnnxRunner(paths["onnx"]), TfliteRunner(paths["none"])):
        for bad in (np.zeros((1, 16, 16, 3), np.uint8), np.zeros((32, 32, 3), np.uint8),
                    np.zeros((0, 32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.float32)):
            with pytest.raises(errors.InvalidInputError,
                               match=r"images must be uint8 \[batch, 32, 32, 3\] \(batch >= 1\)"):
                runner(bad)
    with pytest.raises(ValueError, match="quantize must be one of"):
        tflite_export.export_tflite(None, {}, str(paths["onnx"]) + ".x", resolution=32,
                                    guided=False, quantize="int4")


def test_runtime_benchmark_rows(tmp_path):
    """benchmarks/runtimes_lib.py's function (what the inference benchmark calls), on tiny."""
    rec = runtimes_lib.benchmark_resolution("tiny", 32, ("onnx",), latency_repeats=2,
                                            scratch_dir=str(tmp_path), log=lambda s: None)
    assert rec["resolution"] == 32 and rec["generator_params"] > 0
    for name in ("jax", "onnx"):
        assert rec[name]["median_ms"] > 0 and rec[name]["repeats"] == 2
    assert rec["onnx"]["max_abs_diff_vs_jax"] <= 1 and rec["onnx"]["file_mb"] > 0
    with pytest.raises(ValueError, match="unknown variant"):
        runtimes_lib.benchmark_resolution("tiny", 32, ("coreml",), latency_repeats=1,
                                          scratch_dir=str(tmp_path), log=lambda s: None)
