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


def _full_frame_paste(image, restored_crop, alpha_crop, M):
    """The blend written the plain way: the crop's footprint warped, then mixed over the whole photo."""
    from deocc_jax.faces import align
    from deocc_jax.restoration import blend
    h, w = image.shape[:2]
    x0, y0, x1, y1 = blend.crop_roi(M, alpha_crop.shape[0], (h, w))
    Mr = blend.roi_matrix(M, x0, y0)
    alpha = np.zeros((h, w), np.float32)
    restored = np.zeros((h, w, 3), np.float32)
    alpha[y0:y1, x0:x1] = align.warp_back(alpha_crop, Mr, (y1 - y0, x1 - x0))
    restored[y0:y1, x0:x1] = align.warp_back(restored_crop, Mr, (y1 - y0, x1 - x0))
    alpha[alpha < blend.MIN_ALPHA] = 0.0
    orig = image.astype(np.float32)
    mixed = orig + alpha[..., None] * (restored - orig)
    out = np.where((alpha > 0)[..., None], np.clip(np.round(mixed), 0, 255).astype(np.uint8), image)
    return out, alpha


def test_blending_only_the_weighted_box_equals_the_full_frame_blend(faces_dir):
    """paste_face mixes only inside the box of non-zero weights; the bytes must not change."""
    import cv2
    from deocc_jax.restoration import blend, frames
    photo = cv2.cvtColor(cv2.imread(str(faces_dir / "104.jpg")), cv2.COLOR_BGR2RGB)
    h, w = photo.shape[:2]
    r = 64
    restored = cv2.resize(photo[::-1], (r, r), interpolation=cv2.INTER_AREA)  # another picture
    matrices = []
    for angle, scale, (cx, cy) in ((17.0, 0.41, (0.5, 0.55)), (-8.0, 0.9, (0.08, 0.1))):
        # A rotated, scaled crop in the middle, and one hanging over the photo's corner.
        M = cv2.getRotationMatrix2D((cx * w, cy * h), angle, scale * r / min(h, w))
        M[:, 2] += np.array([r / 2, r / 2]) - np.array([cx * w, cy * h])
        matrices.append(M)
    masks = np.stack([blobs(r), np.roll(blobs(r), -20, axis=0)])
    for M, mask in zip(matrices, masks):
        alpha_crop = blend.blend_alpha_crop(mask, r, blend.MIN_COMPONENT_FRAC)
        got, weights = blend.paste_face(photo, restored, alpha_crop, M)
        want, want_weights = _full_frame_paste(photo, restored, alpha_crop, M)
        assert weights.max() > 0 and (got != photo).any()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(weights, want_weights)
    # Both faces in one frame (what photos, videos and live frames call).
    faces = frames.FaceCrops(matrices, np.stack([restored, restored]))
    got, _ = frames.blend_faces(photo, faces, frames.ModelOutput(np.stack([restored, restored]), masks))
    want = photo
    for M, mask in zip(matrices, masks):
        want, _ = _full_frame_paste(want, restored, blend.blend_alpha_crop(mask, r, blend.MIN_COMPONENT_FRAC), M)
    np.testing.assert_array_equal(got, want)


def test_weight_box_is_the_bounding_box_of_non_zero_weights():
    from deocc_jax.restoration import blend
    alpha = np.zeros((10, 12), np.float32)
    assert blend.weight_box(alpha) is None
    alpha[3, 4] = 0.5
    alpha[6, 9] = 1.0
    assert blend.weight_box(alpha) == (4, 3, 10, 7)
