"""Realism metrics: detail that blur cannot fake, remnants, harm on clean faces, identity vs input."""

import cv2
import jax
import numpy as np
import pytest

from deocc_jax import eval_lib, face_metrics, metrics, sharding
from deocc_jax.data import input_pipeline
from tests import pairs_fixture as pf


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


def test_closer_share():
    d = np.array([0.3, 0.5, np.nan, 0.2, 0.4])
    ref = np.array([0.4, 0.4, 0.1, np.nan, 0.5])
    assert face_metrics.closer_share(d, ref) == (pytest.approx(2 / 3), 3)
    assert face_metrics.closer_share(d, ref, np.array([0, 1, 1, 1, 0], bool)) == (0.0, 1)
    assert face_metrics.closer_share(d, d) == (0.0, 4)   # the input against itself
    assert face_metrics.closer_share(d[:0], ref[:0]) == (None, 0)
    with pytest.raises(ValueError, match="shape"):
        face_metrics.closer_share(d, ref[:2])


# ----------------------------------------------------------------------------- the eval path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, faces_dir):
    return pf.tiny_dataset(tmp_path_factory, faces_dir, resolution=32)


def _method(name, fn, harm):
    def run(batch, local):
        del batch
        out = fn(local["occluded"])
        return {"deoccluded": out, "mask": (local["mask"] > 0).astype(np.float32)}
    return eval_lib.Method(name, name, run, predicts_mask=True, harm=harm)


def test_evaluator_reports_realism_and_harm(data_dir):
    mesh = sharding.make_mesh()

    def blur(x):
        return np.stack([cv2.GaussianBlur(i, (0, 0), 2.0) for i in x])

    def invert(x):
        return 255 - x

    methods = [_method("identity", lambda x: x.copy(), True), _method("blur", blur, True),
               _method("invert", invert, True)]
    batches = input_pipeline.make_eval_iterator(str(data_dir), "validation", 8)
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
        input_pipeline.make_eval_iterator(str(data_dir), "validation", 8),
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


def test_validate_reports_realism(data_dir):
    config, variables = pf.random_tiny(32)
    config.data_dir = str(data_dir)
    config.num_eval_examples = 8
    config.num_sample_images = 0
    config.batch_size = 8
    values, _ = eval_lib.validate(sharding.make_mesh(), config, variables, split="validation")
    for k in ("val_detail_ratio", "val_remnants", "val_harm_changed", "val_harm_ok_share",
              "val_harm_mask_area"):
        assert k in values and np.isfinite(values[k]), (k, values)
    assert not any(k.startswith("val_count") for k in values)


# ----------------------------------------------------------------------------- the harm gate


def _blobs(r=64):
    mask = np.zeros((r, r), np.float32)
    mask[30:50, 16:40] = 0.9    # an occluder: 480 px, 11.7 % of the crop
    mask[5:8, 50:53] = 0.8      # a spurious blob: 9 px, 0.2 %
    return mask


def test_gate_mask_drops_small_regions_only():
    from deocc_jax.restoration import blend
    hard = (_blobs() > 0.5).astype(np.uint8)
    gated = blend.gate_mask(hard, 0.015)
    assert gated[40, 20] == 1 and gated[6, 51] == 0 and gated.sum() == 480
    np.testing.assert_array_equal(blend.gate_mask(hard, 0.0), hard)
    assert blend.gate_mask(np.zeros_like(hard), 0.015).sum() == 0
    # blend_alpha_crop gates only when asked (the web page blends without the gate).
    ungated = blend.blend_alpha_crop(_blobs(), 64)
    assert ungated[6, 51] > 0.5
    np.testing.assert_array_equal(ungated, blend.blend_alpha_crop(_blobs(), 64, 0.0))
    with_gate = blend.blend_alpha_crop(_blobs(), 64, blend.MIN_COMPONENT_FRAC)
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
    out, _ = frames.blend_faces(image, faces, frames.ModelOutput(restored, _blobs()[None]))
    assert out[40, 28, 0] == 200 and out[6, 51, 0] == 100


def test_harm_benchmark_choice_and_composite():
    from benchmarks import harm
    rows = [{"min_component_frac": f, "occluded_share_skipped": s}
            for f, s in ((0.0, 0.0), (0.01, 0.005), (0.02, 0.015), (0.03, 0.01))]
    assert harm.choose(rows, 0.01)["min_component_frac"] == 0.03
    assert harm.choose(rows, 0.0)["min_component_frac"] == 0.0
    inputs = np.full((1, 64, 64, 3), 10, np.uint8)
    restored = np.full((1, 64, 64, 3), 250, np.uint8)
    out, alpha = harm.composite(inputs, restored, _blobs()[None], 0.015)
    assert out[0, 40, 28, 0] == 250 and out[0, 6, 51, 0] == 10 and alpha[0, 6, 51] == 0
    out, _ = harm.composite(inputs, restored, _blobs()[None], 0.0)
    assert out[0, 6, 51, 0] > 10


# ----------------------------------------------------------------------------- masks as worn


@pytest.fixture(scope="module")
def face(faces_dir):
    """(crop, crop landmarks) of one real face, aligned at 128 px as infer aligns it."""
    from deocc_jax.faces import FaceAnalyzer, align
    from deocc_jax.restoration import frames
    image = np.ascontiguousarray(cv2.imread(str(faces_dir / "0.jpg"))[..., ::-1])
    with FaceAnalyzer(mode="image", num_faces=1) as analyzer:
        lm = analyzer.detect(image)[0].landmarks
    crops = frames.align_faces(image, [lm], 128)
    return crops.crops[0], align.transform_landmarks(lm, crops.matrices[0])


def test_mask_styles_are_deterministic_and_counted(face):
    import collections
    from data_prep import occluders as occ
    from data_prep import synth
    crop, lm = face
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, mask_style_prob=1.0, shadow_prob=0.0)
    geo = occ.FaceGeometry.from_landmarks(lm, 128)
    kinds = collections.Counter()
    for v in range(40):
        a = synth.synthesize(crop, lm, synth.variant_rng(7, "x", v), None, cfg, geometry=geo)
        if v < 3:
            b = synth.synthesize(crop, lm, synth.variant_rng(7, "x", v), None, cfg, geometry=geo)
            np.testing.assert_array_equal(a.occluded, b.occluded)
            assert a.style == b.style
        assert a.category == "face_mask" and a.kind == f"face_mask:{a.style}"
        kinds[a.style] += 1
    assert sum(kinds.values()) == 40
    patterns = {k.split("/")[0] for k in kinds}
    colourings = {k.split("/")[1] for k in kinds}
    assert len(patterns) >= 5 and colourings == set(occ.MASK_COLOURINGS)
    assert "plain/as_drawn" not in kinds
    # Off: nothing is drawn, so the pairs are those of a build without styles.
    off = synth.SynthConfig(weights={"face_mask": 1.0}, mask_style_prob=0.0)
    s = synth.synthesize(crop, lm, synth.variant_rng(7, "x", 0), None, off, geometry=geo)
    assert s.style is None and s.kind == "face_mask"


@pytest.mark.parametrize("pattern", ["dots", "stripes", "checks", "camouflage", "text"])
def test_mask_prints_mark_part_of_the_mask(face, pattern):
    from data_prep import occluders as occ
    crop, lm = face
    geo = occ.FaceGeometry.from_landmarks(lm, 128)
    layer = occ.procedural_face_mask(geo, np.random.default_rng(0))
    inside = layer[1] > 0.5
    ink = occ.mask_print(pattern, geo, np.random.default_rng(1))
    share = float((ink[inside] > 0.5).mean())
    assert 0.03 < share < 0.8, share
    styled = occ.restyle_mask(layer, geo, np.random.default_rng(2), occ.MaskStyle(pattern, "dark"))
    np.testing.assert_array_equal(styled[1], layer[1])   # the shape is kept
    lum = styled[0] @ np.array([0.299, 0.587, 0.114], np.float32)
    # Printed: the ink shows against the cloth.
    assert lum[inside].std() > 0.08
    assert not occ.mask_print("plain", geo, np.random.default_rng(1)).any()
    with pytest.raises(ValueError, match="unknown mask print"):
        occ.mask_print("floral", geo, np.random.default_rng(1))


def test_dark_and_saturated_cloth(face):
    from data_prep import occluders as occ
    crop, lm = face
    geo = occ.FaceGeometry.from_landmarks(lm, 128)
    layer = occ.procedural_face_mask(geo, np.random.default_rng(3))
    inside = layer[1] > 0.5
    for seed in range(5):
        dark = occ.restyle_mask(layer, geo, np.random.default_rng(seed), occ.MaskStyle("plain", "dark"))
        lum = dark[0] @ np.array([0.299, 0.587, 0.114], np.float32)
        assert np.median(lum[inside]) < metrics.DARK_OCCLUDER_LUMA
        vivid = occ.restyle_mask(layer, geo, np.random.default_rng(seed),
                                 occ.MaskStyle("plain", "saturated"))
        hsv = cv2.cvtColor((vivid[0] * 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        assert np.median(hsv[..., 1][inside]) > 150
