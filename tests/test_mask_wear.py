"""Face masks as worn (data_prep.mask_wear): light, pleats, valves, straps, shields, counting."""

import collections

import cv2
import numpy as np
import pytest

from data_prep import geometry, mask_wear, occluders, procedural, synth
from deocc_jax.faces import landmarks as L

RES = 128
OFF = mask_wear.WearProbs(light=0, pleats=0, valve=0, straps=0, shield=0)
EYES = list(L.LEFT_EYE_CONTOUR + L.RIGHT_EYE_CONTOUR)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@pytest.fixture(scope="module")
def face(faces_dir):
    """(crop, crop landmarks, geometry, photo stats) of one real, frontal face at 128 px."""
    from deocc_jax.faces import FaceAnalyzer, align
    from deocc_jax.restoration import frames
    image = np.ascontiguousarray(cv2.imread(str(faces_dir / "0.jpg"))[..., ::-1])
    with FaceAnalyzer(mode="image", num_faces=1) as analyzer:
        lm = analyzer.detect(image)[0].landmarks
    crops = frames.align_faces(image, [lm], RES)
    crop, lm = crops.crops[0], align.transform_landmarks(lm, crops.matrices[0])
    geo = geometry.FaceGeometry.from_landmarks(lm, RES)
    return crop, lm, geo, synth.photo_stats(crop, geo)


@pytest.fixture(scope="module")
def image_mask(face, occluders_dir):
    """A surgical mask image placed on the face (no loops of its own)."""
    _, _, geo, _ = face
    library = occluders.OccluderLibrary(str(occluders_dir))
    for seed in range(20):
        layer, name = occluders.render_image(library, "face_mask", geo, np.random.default_rng(seed))
        if "surgical" in name:
            return layer
    pytest.fail("no surgical mask image drawn")


def _wear(face, layer, seed=0, **on):
    _, _, geo, stats = face
    probs = mask_wear.WearProbs(**{**vars(OFF), **on})
    return mask_wear.wear_mask(layer, geo, stats.shading, np.random.default_rng(seed), probs)


def test_wear_is_deterministic_and_counted(face, occluders_dir):
    crop, lm, geo, stats = face
    library = occluders.OccluderLibrary(str(occluders_dir))
    probs = mask_wear.WearProbs(light=0.5, pleats=0.5, valve=0.5, straps=0.7, shield=0.3)
    cfg = synth.SynthConfig(weights={"face_mask": 1.0, "hand": 1.0}, mask_wear=probs)
    kinds, tags = collections.Counter(), collections.Counter()
    for v in range(40):
        a = synth.synthesize(crop, lm, synth.variant_rng(5, "w", v), library, cfg, geometry=geo,
                             stats=stats)
        if v < 4:
            b = synth.synthesize(crop, lm, synth.variant_rng(5, "w", v), library, cfg, geometry=geo,
                                 stats=stats)
            np.testing.assert_array_equal(a.occluded, b.occluded)
            np.testing.assert_array_equal(a.alpha, b.alpha)
            assert a.kind == b.kind
        kinds[a.kind] += 1
        if a.category != "face_mask":
            assert a.wear is None and a.kind == a.category
            continue
        worn = a.wear.split("+") if a.wear else []
        assert a.kind == "face_mask:" + "+".join(([a.style] if a.style else []) + worn)
        if worn == [mask_wear.SHIELD_ONLY]:
            assert a.style is None  # no mask under it, so no print either
        else:  # drawn and written in a fixed order
            assert worn == [t for t in mask_wear.WEAR_TAGS if t in worn]
        tags.update(worn)
    assert set(tags) == set(mask_wear.WEAR_TAGS) | {mask_wear.SHIELD_ONLY}, tags
    # Kinds refine categories: they add up to them (as the prep report's do).
    by_category = collections.Counter()
    for kind, n in kinds.items():
        by_category[kind.split(":")[0]] += n
    assert sum(by_category.values()) == 40 and set(by_category) == {"face_mask", "hand"}
    # Probabilities of 0 draw nothing: no tag, and the kind is the style's alone.
    off = synth.synthesize(crop, lm, synth.variant_rng(5, "w", 0), library,
                           synth.SynthConfig(weights={"face_mask": 1.0}, mask_wear=OFF),
                           geometry=geo, stats=stats)
    assert off.wear is None and off.kind in ("face_mask", f"face_mask:{off.style}")


def test_light_shading_follows_the_face(face, image_mask):
    _, _, geo, _ = face
    body = mask_wear.mask_body(image_mask[1], geo)
    xx, _ = geometry.pixel_coords(RES)
    across = ((xx - geo.eye_mid[0]) / geo.face_width).astype(np.float32)
    for side in (-1, 1):
        shading = 1 + 0.4 * side * across  # the face brighter on the image side `side`
        light = mask_wear.light_direction(shading, geo)
        assert light[0] * side > 0.1 and abs(light[1]) < 0.05, light
        shade = mask_wear.light_shading(body, light, np.random.default_rng(0))
        near = body.inside & (body.u * side > 0.5)
        far = body.inside & (body.u * side < -0.5)
        assert shade[near].mean() > 1.15 * shade[far].mean(), side
    # Lit from above, the part under the chin is darker (relative to the part over
    # the nose) than when lit from below.
    _, yy = geometry.pixel_coords(RES)
    down = ((yy - geo.eye_mid[1]) / geo.face_width).astype(np.float32)
    middle = body.inside & (np.abs(body.u) < 0.3)
    ratios = {}
    for sign in (-1, 1):
        light = mask_wear.light_direction(1 + 0.4 * sign * down, geo)
        assert light[1] * sign > 0.1, light
        shade = mask_wear.light_shading(body, light, np.random.default_rng(0))
        ratios[sign] = shade[middle & (body.v > 0.85)].mean() / shade[middle & (body.v < 0.3)].mean()
    assert ratios[-1] < 0.85 * ratios[1], ratios


def test_pleats_change_luminance_along_horizontal_lines(face, image_mask):
    _, _, geo, _ = face
    body = mask_wear.mask_body(image_mask[1], geo)
    plain = image_mask[0] @ LUMA
    worn = _wear(face, image_mask, pleats=1.0)
    assert worn.tags == ("pleats",)
    np.testing.assert_array_equal(worn.layer[1], image_mask[1])  # shading only: same shape
    ratio = (worn.layer[0] @ LUMA) / np.maximum(plain, 1e-3)
    centre = body.inside & (np.abs(body.u) < 0.4)
    rows = [r for r in range(RES) if centre[r].sum() >= 5]
    row_means = np.array([ratio[r][centre[r]].mean() for r in rows])
    within = np.mean([ratio[r][centre[r]].std() for r in rows])
    # The aligned face is upright, so a pleat is a band of rows: dark creases, lit faces.
    assert row_means.max() - row_means.min() > 0.3, row_means
    assert within < 0.25 * row_means.std(), (within, row_means.std())


def test_valve_sits_inside_the_mask_on_one_side(face, image_mask):
    _, _, geo, _ = face
    body = mask_wear.mask_body(image_mask[1], geo)
    for seed in range(4):
        worn = _wear(face, image_mask, seed=seed, valve=1.0)
        assert worn.tags == ("valve",)
        changed = np.abs(worn.layer[0] - image_mask[0]).max(-1) > 0.05
        assert changed.sum() > 0.01 * body.inside.sum()
        assert (changed <= body.inside).all()  # on the mask, nowhere else
        u, v = body.u[changed], body.v[changed]
        assert (np.all(u > 0.05) or np.all(u < -0.05)), (u.min(), u.max())  # one side
        assert v.min() > 0.15 and v.mean() > 0.45  # on its lower part
        assert np.abs(worn.layer[1] - image_mask[1]).max() < 0.02  # within the mask's outline


def test_straps_run_from_the_sides_towards_the_ears(face, image_mask):
    _, lm, geo, _ = face
    body = mask_wear.mask_body(image_mask[1], geo)
    worn = _wear(face, image_mask, straps=1.0)
    assert worn.tags == ("straps",)
    added = (worn.layer[1] > 0.3) & (image_mask[1] < 0.02)
    assert added.any()
    # Outside the body, beyond its side edges, on both sides of a frontal face.
    assert not (added & body.inside).any()
    u = body.u[added]
    assert (np.abs(u) > 0.8).mean() > 0.95
    assert (u < -1).sum() > 10 and (u > 1).sum() > 10
    # Towards the ears: they end near the face oval, never over the eyes.
    assert np.abs(u).max() > 1.2
    eyes = geometry.fill_polygons(RES, [lm[list(L.LEFT_EYE_CONTOUR)], lm[list(L.RIGHT_EYE_CONTOUR)]])
    assert not (added & (eyes > 0)).any()
    # Procedural masks draw their own loops: no second pair.
    own = procedural.procedural_face_mask(geo, np.random.default_rng(0))
    _, _, _, stats = face
    again = mask_wear.wear_mask(own, geo, stats.shading, np.random.default_rng(0),
                                mask_wear.WearProbs(**{**vars(OFF), "straps": 1.0}), loops_drawn=True)
    assert again.tags == () and np.array_equal(again.layer[1], own[1])


def test_shield_is_see_through_over_the_eyes_and_the_target_stays_clean(face):
    crop, lm, geo, stats = face
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, image_share=0.0, shadow_prob=0.0,
                            mask_wear=mask_wear.WearProbs(**{**vars(OFF), "shield": 1.0}))
    seen = set()
    for v in range(12):
        s = synth.synthesize(crop, lm, synth.variant_rng(2, "s", v), None, cfg, geometry=geo,
                             stats=stats)
        seen.add(s.wear.split("+")[-1])
        np.testing.assert_array_equal(s.clean, crop)  # the restoration target: the clean face
        eyes = lm[EYES]
        p = np.rint(eyes).astype(int)
        a = s.alpha[p[:, 1], p[:, 0], 0].astype(np.float32) / 255
        # The whole shield is in the mask (it tints every pixel), but the eyes show through.
        assert synth.landmark_coverage(s.mask[..., 0] > 0, eyes) == 1.0
        assert 0.1 < np.median(a) < 0.45 and a.max() < 0.65, a
        diff = np.abs(s.occluded.astype(np.float32) - crop.astype(np.float32))[p[:, 1], p[:, 0]]
        assert np.median(diff) < 0.45 * 255
        # ... and so do the lips when it is worn alone.
        if s.wear == mask_wear.SHIELD_ONLY:
            lips = np.rint(lm[list(L.LIPS_OUTER)]).astype(int)
            assert np.median(s.alpha[lips[:, 1], lips[:, 0], 0]) < 0.45 * 255
    assert seen == {"shield", mask_wear.SHIELD_ONLY}
    # Its headband is opaque and above the brows.
    layer = mask_wear.face_shield(geo, np.array([0.0, -0.3, 1.0]), np.random.default_rng(0))
    band = layer[1] > 0.9
    assert band.any()
    brows = lm[list(L.LEFT_BROW + L.RIGHT_BROW)] @ geo.down
    ys, xs = np.nonzero(band)
    assert (np.stack([xs, ys], -1) @ geo.down).max() < brows.min()
