"""Tight re-crops: the box around the template face, what is kept, what is filled, the mask cut."""

import cv2
import numpy as np
import pytest

from deocc_jax.evaluation import framing
from deocc_jax.faces import align


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("resolution", [32, 128])
def test_tight_box_frames_the_face_by_eye_distances(resolution):
    x0, y0, x1, y1 = framing.tight_box(resolution)
    points = align.TEMPLATE_5 * resolution
    eye = np.linalg.norm(points[1] - points[0])
    # Every template point inside, each side 0.8 eye distances (to a pixel) beyond the outermost.
    assert x0 == pytest.approx(points[:, 0].min() - 0.8 * eye, abs=0.5)
    assert y0 == pytest.approx(points[:, 1].min() - 0.8 * eye, abs=0.5)
    assert x1 == pytest.approx(points[:, 0].max() + 0.8 * eye, abs=0.5)
    assert y1 == pytest.approx(points[:, 1].max() + 0.8 * eye, abs=0.5)
    # Tight: well inside the template crop on every side (forehead and background cut off).
    assert 0.1 * resolution < x0 and 0.2 * resolution < y0
    assert x1 < 0.9 * resolution and y1 < 0.95 * resolution


def test_tight_recrop_keeps_the_box_and_fills_the_rest_from_it_alone():
    images = _noise((2, 128, 128, 3))
    box = x0, y0, x1, y1 = framing.tight_box(128)
    out = framing.tight_recrop(images, box)
    assert out.shape == images.shape and out.dtype == np.uint8
    # Inside the box, beyond padded_crop's seam (a third of its pad width: 17 px at most here),
    # pixels are the example's own.
    s = 17
    np.testing.assert_array_equal(out[:, y0 + s:y1 - s, x0 + s:x1 - s],
                                  images[:, y0 + s:y1 - s, x0 + s:x1 - s])
    # Outside, the example is gone: anything drawn there (an occluder's far part) leaves no trace,
    # and the fill is the same on every call.
    outside = np.ones((128, 128), bool)
    outside[y0:y1, x0:x1] = False
    assert np.mean(out[:, outside] != images[:, outside]) > 0.95
    changed = images.copy()
    changed[:, outside] = 0
    np.testing.assert_array_equal(framing.tight_recrop(changed, box), out)
    np.testing.assert_array_equal(framing.tight_recrop(images, box), out)
    # The fill is out-of-focus background (blurred, faded), not the input's noise.
    lap = [np.abs(cv2.Laplacian(i.astype(np.float32), cv2.CV_32F)) for i in out]
    assert all(np.mean(l[:y0 - 2]) < 0.1 * np.mean(l[y0 + s:y1 - s, x0 + s:x1 - s]) for l in lap)


def test_recrop_batch_cuts_the_mask_to_the_box_and_keeps_other_keys():
    box = x0, y0, x1, y1 = framing.tight_box(64)
    clean = _noise((3, 64, 64, 3), 1)
    occluded = clean.copy()
    mask = np.zeros((3, 64, 64, 1), np.uint8)
    mask[:, 40:64, 10:54] = 255          # reaches below the box (a scarf over the neck)
    occluded[mask[..., 0] > 0] = 200
    batch = {"clean": clean, "occluded": occluded, "mask": mask, "index": np.arange(3)}
    out = framing.recrop_batch(batch, box)
    want = np.zeros_like(mask)
    want[:, 40:y1, x0:x1] = 255
    np.testing.assert_array_equal(out["mask"], want)
    np.testing.assert_array_equal(out["clean"], framing.tight_recrop(clean, box))
    np.testing.assert_array_equal(out["occluded"], framing.tight_recrop(occluded, box))
    assert out["index"] is batch["index"]
    assert batch["mask"] is mask and mask[:, 63, 10:54].all()  # the input batch is left alone


def test_a_box_outside_the_crop_or_a_bad_batch_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        framing.tight_recrop(_noise((1, 32, 32, 3)), (0, 0, 40, 20))
    with pytest.raises(ValueError, match="uint8"):
        framing.tight_recrop(np.zeros((1, 32, 32, 3), np.float32), (4, 4, 20, 20))
    with pytest.raises(ValueError, match="no tight box"):
        framing.tight_box(32, margin=-3.0)


def test_describe_records_the_box():
    d = framing.describe(framing.TIGHT, 128)
    assert d["name"] == "tight" and d["box"] == list(framing.tight_box(128))
    assert 0.3 < d["box_fraction"] < 0.5 and d["margin_eye_distances"] == framing.TIGHT_MARGIN
    assert framing.describe(framing.TEMPLATE, 128)["name"] == "template"
