"""Inference on real photos and video: untouched outside the blend, faceless copies, timing kept."""

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from deocc_jax import infer_lib, predictors, sample_photos
from deocc_jax.faces import FaceAnalyzer, align
from deocc_jax.restoration import blend, frames, smoothing
from deocc_jax.io import video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(quickstart_run):
    return predictors.open_predictor(quickstart_run["outputs"]["export"])


def test_pixels_outside_the_blend_are_unchanged(quickstart_run, model, tmp_path):
    # A real photo with an occluder (the quickstart's demo input).
    path = quickstart_run["outputs"]["demo_input"]
    image = infer_lib.read_rgb(path)
    with FaceAnalyzer() as analyzer:
        faces = analyzer.detect(image)
    assert len(faces) == 1
    result = frames.restore_frame(image, [f.landmarks for f in faces], model)
    out, weights = result.image, result.weights
    inside = weights > 0
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(out[~inside], image[~inside])
    # Nothing changes outside the aligned face crop's footprint in the photo.
    footprint = align.warp_back(np.ones((model.resolution,) * 2, np.float32),
                                result.faces.matrices[0], image.shape[:2]) > 0
    changed = np.any(out != image, axis=-1)
    assert changed.any() and not np.any(changed & ~footprint)
    assert footprint.mean() < 0.5
    # The written PNG is the same restoration (lossless), plus mask and before|after.
    reports = infer_lib.process_photos(model, path, str(tmp_path), save_masks=True,
                                       side_by_side_out=True, log=lambda s: None)
    assert reports[0]["status"] == "restored" and reports[0]["faces"] == 1
    np.testing.assert_array_equal(infer_lib.read_rgb(reports[0]["output"]), out)
    mask = cv2.imread(reports[0]["files"][0], cv2.IMREAD_UNCHANGED)
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    sbs = infer_lib.read_rgb(reports[0]["files"][1])
    assert sbs.shape == (image.shape[0], 2 * image.shape[1], 3)


def test_blend_alpha_is_feathered_and_zero_at_crop_border():
    mask = np.zeros((64, 64), np.float32)
    mask[30:50, 16:48] = 1.0
    alpha = blend.blend_alpha_crop(mask, 64)
    assert alpha[40, 32] == pytest.approx(1.0, abs=1e-3)  # inside the mask: fully replaced
    assert 0 < alpha[40, 50] < 1                           # the feathered edge
    assert alpha[5, 5] == 0 and np.all(alpha[0] == 0) and np.all(alpha[:, -1] == 0)


@pytest.mark.slow
def test_photo_without_face_is_copied_and_reported(quickstart_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cat = sample_photos.no_face_photo_path()  # a real photo of a cat
    shutil.copyfile(cat, src / "cat.png")
    shutil.copyfile(quickstart_run["outputs"]["demo_input"], src / "person.png")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "deocc_jax.infer", f"--model={quickstart_run['outputs']['export']}",
         f"--input={src}", f"--output={out}", f"--report={tmp_path / 'report.json'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "cat.png", "rb") as a, open(cat, "rb") as b:
        assert a.read() == b.read()
    assert "cat.png: no face found; copied unchanged" in proc.stdout
    assert "1 restored, 1 without a face" in proc.stdout
    assert (out / "person.png").is_file()
    import json
    statuses = {os.path.basename(r["input"]): r["status"]
                for r in json.load(open(tmp_path / "report.json"))}
    assert statuses == {"cat.png": "no_face", "person.png": "restored"}


def _make_video(path, frames=18, fps=12.5, size=256):
    """A short clip of a real face photo panning and zooming slightly."""
    image = cv2.cvtColor(infer_lib.read_rgb(sample_photos.face_photo_paths()[0]), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert writer.isOpened()
    for i in range(frames):
        s = size / image.shape[1] * (1.0 + 0.01 * i)
        M = np.float32([[s, 0, -0.1 * size + 2 * i], [0, s, -0.02 * size + i]])
        writer.write(cv2.warpAffine(image, M, (size, size)))
    writer.release()


def test_video_keeps_frame_count_and_rate(quickstart_run, tmp_path):
    clip = tmp_path / "clip.mp4"
    _make_video(clip)
    src = video.probe(str(clip))
    assert src.frame_count == 18
    model = predictors.open_predictor(quickstart_run["outputs"]["workdir"])  # the JAX checkpoint this time
    lines = []
    stats = infer_lib.process_video(model, str(clip), str(tmp_path / "out"), side_by_side_out=True,
                                    log=lines.append)
    got = video.probe(stats["output"])
    assert got.frame_count == src.frame_count
    assert got.fps == pytest.approx(src.fps)
    assert (got.width, got.height) == (src.width, src.height)
    sbs = video.probe(stats["files"][0])
    assert sbs.frame_count == src.frame_count and sbs.width == 2 * src.width
    assert stats["faces"] >= src.frame_count - 2  # the face is tracked in (almost) every frame
    assert {"detect", "align", "model", "blend"} <= set(stats["stage_ms"])
    assert "frames/s" in lines[-1] and "detect" in lines[-1]


def test_one_euro_smoothing_removes_jitter():
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 200, (478, 2)).astype(np.float32)
    smoother = smoothing.LandmarkSmoother(min_cutoff=1.0, beta=1.0)
    raw, smooth = [], []
    for i in range(60):
        noisy = base + rng.normal(0, 1.5, base.shape).astype(np.float32)
        raw.append(noisy)
        smooth.append(smoother([noisy], i / 30.0)[0])
    jitter = lambda xs: np.mean(np.abs(np.diff(np.stack(xs[10:]), axis=0)))
    assert jitter(smooth) < 0.5 * jitter(raw)
    # A new face far away starts its own track instead of being dragged along.
    far = smoother([smooth[-1], base + 500], 2.0)
    np.testing.assert_allclose(far[1], base + 500, atol=1e-4)


class _Guided:
    resolution, guided, description = 32, True, "a guided test model"


def test_clear_errors_for_guided_models_and_broken_photos(tmp_path, model):
    photo = sample_photos.face_photo_paths()[0]
    with pytest.raises(ValueError, match="guided model: pass the occluder's mask with --mask"):
        infer_lib.process_photos(_Guided(), photo, str(tmp_path / "o"), log=lambda s: None)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: not_an_image"):  # prep's decoder and reason
        infer_lib.process_photos(model, str(broken), str(tmp_path / "o"), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no images"):
        infer_lib.collect_images(str(tmp_path / "*.png"))
