"""Jitted metrics agree with scikit-image and with direct numpy definitions."""

import cv2
import jax
import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from deocc_jax import losses, metrics


def _skimage_ssim(a, b, data_range):
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, channel_axis=-1)


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 45, 61, 3), (2, 24, 24, 1)])
def test_random_images_match_skimage(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.15, shape), 0, 1).astype(np.float32)
    ssim = np.asarray(jax.jit(metrics.ssim)(a, b))
    for i in range(shape[0]):
        assert ssim[i] == pytest.approx(_skimage_ssim(a[i], b[i], 1.0), abs=1e-4)
        assert float(metrics.mse(a, b)[i]) == pytest.approx(mean_squared_error(a[i], b[i]), rel=1e-5)
        assert float(metrics.psnr(a, b)[i]) == pytest.approx(
            peak_signal_noise_ratio(a[i], b[i], data_range=1.0), abs=1e-4)


def test_real_images_match_skimage_uint8_range(faces_dir):
    faces = []
    for name in ("0.jpg", "1.jpg"):
        img = cv2.imread(str(faces_dir / name))
        faces.append(cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA)[..., ::-1])
    a = np.stack(faces).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(f, (5, 5), 1.5) for f in faces]).astype(np.float32)
    shifted = np.roll(a, 3, axis=2)
    for b in (blurred, shifted):
        ours = np.asarray(metrics.ssim(a, b, data_range=255.0))
        ours_p = np.asarray(metrics.psnr(a, b, data_range=255.0))
        for i in range(2):
            assert ours[i] == pytest.approx(_skimage_ssim(a[i], b[i], 255.0), abs=1e-4)
            assert ours_p[i] == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=255.0),
                                              abs=1e-3)
    assert float(metrics.ssim(a, a, 255.0)[0]) == pytest.approx(1.0, abs=1e-6)


def test_masked_metrics():
    rng = np.random.default_rng(0)
    a = rng.random((2, 32, 32, 3)).astype(np.float32)
    b = a.copy()
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[0, 10:20, 8:24] = 1.0
    b[0, 10:20, 8:24] += 0.1  # error only inside image 0's mask
    out = jax.device_get(metrics.image_metrics(b, a, mask, None))
    inside = ((b - a) ** 2)[0][mask[0, ..., 0] > 0].mean()
    assert out["masked_mse"][0] == pytest.approx(inside, rel=1e-5)
    assert out["mse"][0] == pytest.approx(inside * 160 / 1024, rel=1e-5)
    assert out["masked_psnr"][0] == pytest.approx(10 * np.log10(1 / inside), rel=1e-5)
    assert list(out["has_mask"]) == [1.0, 0.0]
    assert out["masked_ssim"][0] < 1.0 and out["ssim"][1] == pytest.approx(1.0, abs=1e-6)
    acc = metrics.MetricAccumulator()
    acc.add(out)
    r = acc.result()
    assert r["masked_mse"] == pytest.approx(inside, rel=1e-5)  # image 1 (no mask) excluded
    assert r["mse"] == pytest.approx(out["mse"].mean(), rel=1e-6)


def test_mask_iou():
    t = np.zeros((3, 8, 8, 1), np.float32)
    t[:, :4] = 1.0
    p = np.zeros_like(t)
    p[0, :4] = 0.9          # identical
    p[1, :2] = 0.9          # half
    iou = np.asarray(metrics.mask_iou(p, t))
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0])
    empty = np.zeros((1, 8, 8, 1), np.float32)
    assert float(metrics.mask_iou(empty, empty)[0]) == 1.0


def test_losses_behave():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    y = x + 0.5
    mask = np.zeros((2, 16, 16, 1), np.float32)
    mask[:, :8] = 1.0
    assert float(losses.weighted_l1(y, x, mask, 1.0)) == pytest.approx(0.5, rel=1e-6)
    assert float(losses.weighted_l1(y, x, mask, 5.0)) == pytest.approx(0.5 * 3.0, rel=1e-6)
    good = np.where(mask > 0, 10.0, -10.0).astype(np.float32)
    assert float(losses.mask_bce(good, mask)) < 1e-3 < float(losses.mask_bce(-good, mask))
    assert float(losses.mask_dice(good, mask)) < 0.01 < 0.9 < float(losses.mask_dice(-good, mask))
    real = [{"logits": np.full((2, 4, 4, 1), 1.0, np.float32), "features": []}]
    fake = [{"logits": np.full((2, 4, 4, 1), -1.0, np.float32), "features": []}]
    for kind in losses.ADVERSARIAL_KINDS:
        perfect_d = float(losses.discriminator_loss(real, fake, kind))
        fooled_d = float(losses.discriminator_loss(fake, real, kind))
        assert perfect_d < fooled_d, kind
        assert float(losses.generator_adversarial_loss(real, kind)) < float(
            losses.generator_adversarial_loss(fake, kind)), kind
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        losses.discriminator_loss(real, fake, "wgan")


def test_raw_fill_is_trained_over_the_whole_true_mask():
    """The composite hides the fill where the predicted mask is off; raw_l1 does not."""
    import ml_collections
    clean = np.zeros((1, 8, 8, 3), np.float32)
    occluded = np.ones_like(clean)                    # the occluder: +1 everywhere it sits
    mask = np.zeros((1, 8, 8, 1), np.float32)
    mask[:, :4] = 1.0                                  # true occluder: the top half
    logits = np.full_like(mask, -20.0)                 # the mask head sees nothing
    raw = occluded.copy()                              # a fill that copies the occluder
    out = {"output": occluded, "raw": raw, "mask_logits": logits}
    weights = ml_collections.ConfigDict(dict(
        l1_weight=1.0, l1_occluded_weight=1.0, raw_l1_weight=0.0, ssim_weight=0.0,
        mask_bce_weight=0.0, mask_dice_weight=0.0, adv_weight=0.0, adversarial="hinge",
        feature_matching_weight=0.0))
    _, terms = losses.generator_loss(weights, out, clean, mask)
    assert "raw_l1" not in terms
    weights.raw_l1_weight = 5.0
    total, terms = losses.generator_loss(weights, out, clean, mask)
    # 1.0 per channel in the 96 masked values, with eps = 1 in the denominator
    assert float(terms["raw_l1"]) == pytest.approx(96 / 97, rel=1e-6)
    assert float(total) == pytest.approx(float(terms["l1"]) + 5.0 * 96 / 97, rel=1e-6)
    good = dict(out, raw=np.where(mask > 0, clean, raw))
    assert float(losses.generator_loss(weights, good, clean, mask)[1]["raw_l1"]) == 0.0
