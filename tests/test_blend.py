"""The harm gate: blending drops small mask regions only (deocc_jax.restoration)."""

import numpy as np
import pytest


def blobs(r=64):
    mask = np.zeros((r, r), np.float32)
    mask[30:50, 16:40] = 0.9    # an occluder: 480 px, 11.7 % of the crop
    mask[5:8, 50:53] = 0.8      # a spurious blob: 9 px, 0.2 %
    return mask


def test_gate_mask_drops_small_regions_only():
    from deocc_jax.restoration import blend
    hard = (blobs() > 0.5).astype(np.uint8)
    gated = blend.gate_mask(hard, 0.015)
    assert gated[40, 20] == 1 and gated[6, 51] == 0 and gated.sum() == 480
    np.testing.assert_array_equal(blend.gate_mask(hard, 0.0), hard)
    assert blend.gate_mask(np.zeros_like(hard), 0.015).sum() == 0
    # blend_alpha_crop gates only when asked (the web page blends without the gate).
    ungated = blend.blend_alpha_crop(blobs(), 64)
    assert ungated[6, 51] > 0.5
    np.testing.assert_array_equal(ungated, blend.blend_alpha_crop(blobs(), 64, 0.0))
    with_gate = blend.blend_alpha_crop(blobs(), 64, blend.MIN_COMPONENT_FRAC)
    assert with_gate[6, 51] == 0 and with_gate[40, 28] == pytest.approx(ungated[40, 28])


def test_photos_and_frames_blend_with_the_gate():
    from deocc_jax.restoration import frames
    r = 64
    image = np.full((r, r, 3), 100, np.uint8)
    faces = frames.FaceCrops([np.array([[1.0, 0, 0], [0, 1.0, 0]])], image[None].copy())
    restored = np.full((1, r, r, 3), 200, np.uint8)
    small = np.zeros((1, r, r), np.float32)
    small[0, 28:33, 28:33] = 0.9   # 25 px: 0.6 % of the crop, under the gate
    out, weights = frames.blend_faces(image, faces, frames.ModelOutput(restored, small))
    np.testing.assert_array_equal(out, image)
    assert weights.max() == 0
    out, _ = frames.blend_faces(image, faces, frames.ModelOutput(restored, blobs()[None]))
    assert out[40, 28, 0] == 200 and out[6, 51, 0] == 100
