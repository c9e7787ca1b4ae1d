"""Evaluation: every field written, SSIM agrees with scikit-image, any device count."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from deocc_jax import errors, models
from deocc_jax.evaluation import baselines, eval_lib, framing
from deocc_jax.evaluation import metrics as pixel_metrics
from deocc_jax.data import input_pipeline
import cv2
from deocc_jax.training import sharding
from tests import pairs_fixture as pf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def metrics(quickstart_run):
    with open(quickstart_run["outputs"]["metrics"]) as f:
        return json.load(f)


def test_metrics_json_has_every_field(metrics, quickstart_run):
    methods = metrics["methods"]
    assert list(methods) == ["model", "occluded_input", "opencv_telea", "opencv_ns"]
    n = metrics["num_examples"]
    assert n > 0 and sum(metrics["categories"].values()) == n
    for name, m in methods.items():
        keys = set(eval_lib.METRIC_KEYS) - ({"mask_iou"} if name != "model" else set())
        faces = set(eval_lib.METRIC_KEYS) - set(eval_lib.PIXEL_KEYS)
        assert m["overall"]["count"] == n
        assert keys <= set(m["overall"]), (name, m["overall"])
        assert set(m["per_category"]) == set(metrics["categories"])
        for cat, c in m["per_category"].items():
            assert c["count"] == metrics["categories"][cat]
            assert keys <= set(c)
        assert all(np.isfinite(m["overall"][k]) for k in keys - faces)
        # Face metrics: means over the faces found for every method, with the counts.
        assert m["overall"]["count_faces"] == m["overall"]["expression_error_found"] > 0
        assert all(m["overall"][k] >= 0 for k in faces)
    # Baselines never see a predicted mask; the blind model reports its IoU.
    assert "mask_iou" not in methods["opencv_telea"]["overall"]
    assert 0.0 <= methods["model"]["overall"]["mask_iou"] <= 1.0
    assert metrics["checkpoints"]["model"]["step"] == quickstart_run["steps"]
    # The Markdown table and the sample grid are written beside the JSON.
    with open(quickstart_run["outputs"]["metrics_table"]) as f:
        table = f.read()
    for name in methods:
        assert f"| {name} |" in table
    import cv2
    grid = cv2.imread(quickstart_run["outputs"]["eval_samples"])
    # occluded | model | telea | ns | clean, at 128 px per tile.
    assert grid is not None and grid.shape[1] == 5 * 128
    kinds = {g["kind"] for g in metrics["grid_examples"]}
    assert {"best", "worst"} <= kinds or n < 2


def test_occluded_input_ssim_equals_skimage(metrics, quickstart_run):
    data = quickstart_run["outputs"]["dataset"]
    split = input_pipeline.read_examples(data, "test", range(input_pipeline.split_size(data, "test")))
    want = np.mean([structural_similarity(e["clean"], e["occluded"], data_range=255,
                                          gaussian_weights=True, channel_axis=-1) for e in split])
    got = metrics["methods"]["occluded_input"]["overall"]["ssim"]
    assert got == pytest.approx(want, abs=1e-5)
    # Inpainting with the true mask must beat doing nothing inside the mask.
    m = metrics["methods"]
    assert m["opencv_telea"]["overall"]["masked_psnr"] > m["occluded_input"]["overall"]["masked_psnr"]


@pytest.mark.slow
def test_cli_on_another_device_count_matches(quickstart_run, metrics, tmp_path):
    """The checkpoint was written on 8 devices; evaluate it on 2 through the CLI."""
    out = tmp_path / "m.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "deocc_jax.evaluate", f"--model={quickstart_run['outputs']['workdir']}",
         f"--data_dir={quickstart_run['outputs']['dataset']}", "--split=test", f"--output={out}",
         f"--compare={quickstart_run['outputs']['workdir']}", "--batch_size=4", "--noface_metrics"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        got = json.load(f)
    assert got["num_devices"] == 2 and metrics["num_devices"] == 8
    assert "compare:workdir" in got["methods"]
    for name in ("model", "compare:workdir"):
        for k in eval_lib.PIXEL_KEYS:  # the face metrics were not asked for this time
            v = metrics["methods"]["model"]["overall"][k]
            assert got["methods"][name]["overall"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
    assert (tmp_path / "m.md").is_file() and (tmp_path / "m_samples.png").is_file()
    assert "| model |" in proc.stdout


def test_no_grid_when_asked_for_none(quickstart_run, tmp_path):
    """grid_rows_per_kind=0 writes no picture: shipped metrics carry no dataset photos."""
    data = quickstart_run["outputs"]["dataset"]
    out = tmp_path / "m.json"
    got = eval_lib.evaluate(None, data, output=str(out), grid_rows_per_kind=0, log=lambda _: None)
    assert "grid" not in got["outputs"] and got["grid_examples"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.md"]
    with pytest.raises(errors.InvalidInputError, match="--grid_rows=-1"):
        eval_lib.evaluate(None, data, output=str(out), grid_rows_per_kind=-1)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_prep.build"):
        eval_lib.evaluate(None, str(tmp_path / "nope"), output=str(tmp_path / "m.json"))


def test_opencv_baselines_only_change_masked_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    masks = np.zeros((2, 24, 24, 1), np.uint8)
    masks[:, 8:14, 5:18] = 255
    for name in ("opencv_telea", "opencv_ns"):
        out = baselines.BASELINES[name](images, masks)
        outside = masks[..., 0] == 0
        np.testing.assert_array_equal(out[outside], images[outside])
        assert np.any(out[~outside] != images[~outside]), name
    with pytest.raises(ValueError, match="masks must be uint8"):
        baselines.opencv_telea(images, masks[:1])


# ---------------------------------------------------------------------------- one line per mistake


def test_evaluate_batch_size_zero_is_one_line_without_traceback(empty_val_run, empty_val_data_dir):
    proc = pf.run_binary("deocc_jax.evaluate", f"--model={empty_val_run['workdir']}",
                         f"--data_dir={empty_val_data_dir}",
                       "--split=train", "--batch_size=0", "--noface_metrics")
    pf.assert_one_line_error(proc, "--batch_size=0", "must be a positive")


# ----------------------------------------------------------------------------- realism, harm


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory, faces_dir):
    return pf.tiny_dataset(tmp_path_factory, faces_dir, resolution=32)


def _method(name, fn, harm):
    def run(batch, local):
        del batch
        out = fn(local["occluded"])
        return {"deoccluded": out, "mask": (local["mask"] > 0).astype(np.float32)}
    return eval_lib.Method(name, name, run, predicts_mask=True, harm=harm)


def test_evaluator_reports_realism_and_harm(tiny_data_dir):
    mesh = sharding.make_mesh()

    def blur(x):
        return np.stack([cv2.GaussianBlur(i, (0, 0), 2.0) for i in x])

    def invert(x):
        return 255 - x

    methods = [_method("identity", lambda x: x.copy(), True), _method("blur", blur, True),
               _method("invert", invert, True)]
    batches = input_pipeline.make_eval_iterator(str(tiny_data_dir), "validation", 8)
    result = eval_lib.Evaluator(mesh).run(batches, methods)
    agg = {name: eval_lib.aggregate(result.per_image[name], result.categories)["overall"]
           for name in result.per_image}
    # Doing nothing keeps every remnant and all of the occluder's own detail; harms nothing.
    assert agg["identity"]["remnants"] == pytest.approx(1.0)
    assert agg["identity"]["harm_changed"] == 0.0 and agg["identity"]["harm_ok_share"] == 1.0
    assert agg["blur"]["detail_ratio"] < 0.5
    assert agg["invert"]["harm_changed"] > 0.5 and agg["invert"]["harm_ok_share"] == 0.0
    # The harm pass sees the clean faces with empty masks.
    assert agg["identity"]["harm_mask_area"] == 0.0
    assert "detail_ratio" in agg["identity"] and agg["identity"]["count_dark"] >= 0
    # A method without the harm pass reports no harm.
    result = eval_lib.Evaluator(mesh).run(
        input_pipeline.make_eval_iterator(str(tiny_data_dir), "validation", 8),
        [_method("telea_like", lambda x: x.copy(), False)])
    assert "harm_changed" not in eval_lib.aggregate(result.per_image["telea_like"],
                                                    result.categories)["overall"]


def test_aggregate_identity_against_doing_nothing_and_report():
    n = 4
    base = {"has_mask": np.ones(n), "psnr": np.ones(n), "face_found": np.ones(n, bool),
            "clean_face_found": np.ones(n, bool),
            "detail_num": np.ones(n), "detail_den": np.full(n, 2.0)}
    model = dict(base, identity_distance=np.array([0.3, 0.5, 0.2, 0.1]),
                 expression_error=np.zeros(n))
    nothing = dict(base, identity_distance=np.array([0.4, 0.4, 0.3, 0.05]),
                   expression_error=np.zeros(n))
    cats = ["a", "a", "b", "b"]
    agg = eval_lib.aggregate(model, cats, doing_nothing=nothing)
    assert agg["overall"]["identity_closer_than_input"] == pytest.approx(0.5)
    assert agg["overall"]["identity_closer_count"] == 4
    assert agg["per_category"]["a"]["identity_closer_than_input"] == pytest.approx(0.5)
    assert agg["overall"]["detail_ratio"] == pytest.approx(0.5)
    assert "identity_closer_than_input" not in eval_lib.aggregate(nothing, cats)["overall"]
    table = "\n".join(eval_lib.realism_table({"model": agg, "occluded_input":
                                              eval_lib.aggregate(nothing, cats)}))
    assert "| model | 0.500 | 0.275 | 50.0 % |" in table
    assert "| occluded_input | 0.500 | 0.288 | – |" in table


def test_validate_reports_realism(tiny_data_dir):
    config, variables = pf.random_tiny(32)
    config.data_dir = str(tiny_data_dir)
    config.num_eval_examples = 8
    config.num_sample_images = 0
    config.batch_size = 8
    values, _ = eval_lib.validate(sharding.make_mesh(), config, variables, split="validation")
    for k in ("val_detail_ratio", "val_remnants", "val_harm_changed", "val_harm_ok_share",
              "val_harm_mask_area"):
        assert k in values and np.isfinite(values[k]), (k, values)
    assert not any(k.startswith("val_count") for k in values)


# ----------------------------------------------------------------------------- tight framing


def test_evaluate_tight_framing_scores_every_method_on_the_recrops(empty_val_run, empty_val_data_dir,
                                                                   tmp_path):
    out = tmp_path / "m.json"
    proc = pf.run_binary("deocc_jax.evaluate", f"--model={empty_val_run['workdir']}",
                         f"--data_dir={empty_val_data_dir}", "--split=train", "--framing=tight",
                         "--noface_metrics", "--grid_rows=1", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    box = framing.tight_box(got["resolution"])
    assert got["framing"]["name"] == "tight" and got["framing"]["box"] == list(box)
    assert "Framing: tight re-crops" in (tmp_path / "m.md").read_text()
    assert list(got["methods"]) == ["model", "occluded_input", "opencv_telea", "opencv_ns"]
    # The baselines got the re-cropped input and were scored against the re-cropped clean face
    # inside the mask cut to the box: doing nothing scores what those pairs score.
    data = str(empty_val_data_dir)
    examples = input_pipeline.read_examples(data, "train",
                                            range(input_pipeline.split_size(data, "train")))
    batch = framing.recrop_batch({k: np.stack([e[k] for e in examples])
                                  for k in eval_lib.IMAGE_KEYS}, box)
    want = {k: np.asarray(v) for k, v in pixel_metrics.image_metrics(
        *(models.mask_to_unit(batch[k]) for k in ("occluded", "clean", "mask"))).items()}
    nothing = got["methods"]["occluded_input"]["overall"]
    assert nothing["mse"] == pytest.approx(want["mse"].mean(), rel=1e-4)
    assert nothing["count_masked"] == int(want["has_mask"].sum()) > 0
    assert nothing["masked_mse"] == pytest.approx(
        want["masked_mse"][want["has_mask"] > 0].mean(), rel=1e-4)
    # The grid shows the re-cropped input (tiles are 4x nearest-neighbour upscales of 32 px).
    grid = cv2.cvtColor(cv2.imread(str(tmp_path / "m_samples.png")), cv2.COLOR_BGR2RGB)
    shown = got["grid_examples"][0]["index"]
    tile = grid[18 + 16:18 + 16 + 128, :128][::4, ::4]
    np.testing.assert_array_equal(tile, batch["occluded"][shown])
