"""Jitted metrics agree with scikit-image and with direct numpy definitions."""

import cv2
import jax
import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from deocc_jax.evaluation import metrics
from deocc_jax.training import losses


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


# ----------------------------------------------------------------------------- realism


def _texture(shape=(2, 48, 48, 3), seed=0):
    """Fine-grained texture in [0.2, 0.8]: plenty of Laplacian energy."""
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * rng.random(shape)).astype(np.float32)


def _square_mask(r=48, lo=8, hi=40):
    m = np.zeros((2, r, r, 1), np.float32)
    m[:, lo:hi, lo:hi] = 1.0
    return m


def _detail_ratio(pred, target, mask):
    num, den = metrics.detail_sums(pred, target, mask)
    return float(np.sum(num) / np.sum(den))


def test_detail_ratio_blur_identity_noise():
    clean = _texture()
    mask = _square_mask()
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 3.0) for c in clean])
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
    assert _detail_ratio(clean, clean, mask) == pytest.approx(1.0, abs=1e-6)
    assert _detail_ratio(blurred, clean, mask) < 0.05
    assert _detail_ratio(np.full_like(clean, 0.5), clean, mask) == 0.0
    assert _detail_ratio(noisy, clean, mask) > 1.2


def test_detail_counts_only_the_eroded_mask():
    """A seam on the mask's edge (within 4 px) adds no detail; the same seam inside does."""
    clean = np.full((1, 48, 48, 3), 0.5, np.float32)
    clean[:, 8:40, 8:40] += np.float32(0.01) * (np.arange(32) % 2)[None, :, None, None]
    mask = _square_mask()[:1]
    seam = clean.copy()
    seam[:, 8:11, 8:40] = 1.0           # a bright 3 px band along the mask's top edge
    base = float(metrics.detail_sums(clean, clean, mask)[0][0])
    assert float(metrics.detail_sums(seam, clean, mask)[0][0]) == pytest.approx(base, rel=1e-5)
    inner = clean.copy()
    inner[:, 20:23, 8:40] = 1.0
    assert float(metrics.detail_sums(inner, clean, mask)[0][0]) > 2 * base


def test_erode_square_and_border():
    m = np.zeros((1, 32, 32, 1), np.float32)
    m[0, 5:25, 10:30] = 1.0
    got = np.asarray(metrics.erode(m, 4))[0, ..., 0]
    want = np.zeros((32, 32), np.float32)
    want[9:21, 14:26] = 1.0
    np.testing.assert_array_equal(got, want)
    full = np.ones((1, 16, 16, 1), np.float32)
    got = np.asarray(metrics.erode(full, 4))[0, ..., 0]
    assert got[:4].sum() == got[:, -4:].sum() == 0 and got[4:12, 4:12].all()
    np.testing.assert_array_equal(np.asarray(metrics.erode(m, 0)), m)


def test_abs_laplacian_matches_opencv():
    g = _texture((1, 20, 24, 1))
    ours = np.asarray(metrics.abs_laplacian(g))[0, ..., 0]
    want = np.abs(cv2.Laplacian(g[0, ..., 0], cv2.CV_32F, ksize=1))
    np.testing.assert_allclose(ours[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5)


def test_remnants():
    rng = np.random.default_rng(0)
    clean = (0.4 + 0.2 * rng.random((2, 16, 16, 3))).astype(np.float32)
    occluded = clean.copy()
    mask = np.zeros((2, 16, 16, 1), np.float32)
    mask[:, 4:12, 4:12] = 1.0
    occluded[:, 4:12, 4:12] = 0.0        # a black occluder
    occluded[:, 4:6, 4:12] = clean[:, 4:6, 4:12] + 0.05  # a faint part: not judged
    judged = 6 * 8

    def counts(pred):
        num, den = metrics.remnant_counts(pred, occluded, clean, mask)
        return np.asarray(num), np.asarray(den)

    num, den = counts(occluded)
    np.testing.assert_array_equal(den, [judged, judged])
    np.testing.assert_array_equal(num, den)            # doing nothing: all remnant
    assert counts(clean)[0].sum() == 0                  # the clean face: none
    faded = clean * 0.6 + occluded * 0.4                # faded, closer to the face
    assert counts(faded)[0].sum() == 0
    grey_blur = clean * 0.3 + occluded * 0.7            # a grey blur: still the occluder's
    np.testing.assert_array_equal(counts(grey_blur)[0], [judged, judged])


def test_occluder_luma_and_dark_remnants():
    clean = np.full((2, 16, 16, 3), 0.6, np.float32)
    mask = np.zeros((2, 16, 16, 1), np.float32)
    mask[:, 2:14, 2:14] = 1.0
    occluded = clean.copy()
    occluded[0, 2:14, 2:14] = 0.05   # dark occluder
    occluded[1, 2:14, 2:14] = 0.95   # white one
    luma = np.asarray(metrics.occluder_luma(occluded, mask))
    assert luma[0] == pytest.approx(0.05, abs=1e-5) and luma[1] == pytest.approx(0.95, abs=1e-5)
    assert np.isnan(np.asarray(metrics.occluder_luma(occluded, np.zeros_like(mask)))).all()
    pred = clean.copy()
    pred[0] = occluded[0]            # the dark occluder is left, the white one removed
    per = jax.device_get(metrics.realism_metrics(pred, clean, occluded, mask))
    s = metrics.realism_summary(per)
    assert s["count_dark"] == 1
    assert s["remnants_dark"] == pytest.approx(1.0)
    assert s["remnants"] == pytest.approx(0.5)


def test_changed_share_and_mask_area():
    clean = np.full((3, 8, 8, 3), 0.5, np.float32)
    region = np.ones((3, 8, 8, 1), np.float32)
    region[:, :, :2] = 0.0
    pred = clean.copy()
    pred[1, :, 4:] += 31 / 255       # 4 of the region's 6 columns
    pred[2] += 29 / 255              # below the threshold everywhere
    got = np.asarray(metrics.changed_share(pred, clean, region))
    np.testing.assert_allclose(got, [0.0, 4 / 6, 0.0], atol=1e-6)
    pm = np.zeros((1, 10, 10, 1), np.float32)
    pm[0, :5, :2] = 0.9
    pm[0, 5:, :2] = 0.4
    assert float(metrics.mask_area(pm)[0]) == pytest.approx(0.1)


def test_realism_summary_pools_sums_and_harm():
    per = {"detail_num": np.array([1.0, 9.0, 0.0]), "detail_den": np.array([2.0, 10.0, 0.0]),
           "remnant_num": np.array([0.0, 3.0, 0.0]), "remnant_den": np.array([10.0, 2.0, 0.0]),
           "occluder_luma": np.array([0.9, 0.1, np.nan]),
           "harm_changed": np.array([0.0, 0.005, 0.2]), "harm_mask_area": np.array([0.0, 0.1, 0.2])}
    s = metrics.realism_summary(per)
    assert s["detail_ratio"] == pytest.approx(10 / 12)   # a ratio of sums, not a mean of ratios
    assert s["remnants"] == pytest.approx(3 / 12)
    assert s["remnants_dark"] == pytest.approx(1.5) and s["count_dark"] == 1
    assert s["harm_changed"] == pytest.approx(0.205 / 3)
    assert s["harm_ok_share"] == pytest.approx(2 / 3)
    assert s["harm_mask_area"] == pytest.approx(0.1)
    only = metrics.realism_summary(per, np.array([True, False, False]))
    assert only["detail_ratio"] == pytest.approx(0.5) and "remnants_dark" not in only


def test_face_region_covers_the_template_face():
    from deocc_jax.faces import align
    r = 128
    region = metrics.face_region(r)[0, ..., 0]
    cx, cy, ax, ay = metrics.FACE_ELLIPSE
    assert region.mean() == pytest.approx(np.pi * ax * ay, rel=0.02)
    for x, y in np.floor(align.TEMPLATE_5 * r).astype(int):
        assert region[y, x] == 1.0
    assert region[2, 2] == region[-3, -3] == 0.0
