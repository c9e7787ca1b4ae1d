"""data_prep units: the shared decoder, synthesis invariants and realism, pose-following
placement, plausibility checks, groups and splits, input listing, flag validation."""

import io
import math
import os
import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from data_prep import alignment, build_lib, config as config_lib, geometry, mask_styles, mask_wear
from data_prep import occluders
from data_prep import plan, prep_flags, procedural, sources, synth
from deocc_jax import errors
from deocc_jax.faces import FaceAnalyzer, align, largest_face
from deocc_jax.faces import landmarks as L
from deocc_jax.io import images
from deocc_jax.evaluation import metrics

RES = 128
PHOTOS = ("0.jpg", "1.jpg", "10.jpg", "100.jpg", "105.jpg", "11.jpg")
# LFW faces turned 34-45 degrees (measured in test_profile_faces_are_really_turned).
PROFILE = ("Patrick_Stewart_0001.jpg", "Arnold_Schwarzenegger_0001.jpg", "Lubomir_Zaoralek_0001.jpg",
           "Kate_Moss_0001.jpg", "Tung_Chee-hwa_0001.jpg")
EYES = list(L.LEFT_EYE_CONTOUR + L.RIGHT_EYE_CONTOUR)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# --- the shared decoder (deocc_jax.io.images) -----------------------------------

def test_decode_modes_to_rgb_uint8():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = (200, 10, 10)
    for im, fmt in [(Image.fromarray(rgb), "PNG"),
                    (Image.fromarray(rgb).convert("L"), "PNG"),
                    (Image.fromarray(rgb).convert("RGBA"), "PNG"),
                    (Image.fromarray(rgb).convert("P"), "PNG"),
                    (Image.fromarray(rgb).convert("CMYK"), "JPEG"),
                    (Image.fromarray(rgb).convert("CMYK"), "TIFF")]:
        out = images.decode_image(_encode(im, fmt))
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3), (im.mode, fmt)
        assert out[5, 20].max() < 40 and out[5, 2].max() > 60, (im.mode, fmt, out[5, 2])


def test_decode_16bit_alpha_over_white_or_kept():
    g16 = np.full((8, 8), 65535 // 2, np.uint16)
    ok, png = cv2.imencode(".png", g16)
    out = images.decode_image(png.tobytes())
    assert out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black -> white
    rgba[0, 0] = (10, 20, 30, 200)
    data = _encode(Image.fromarray(rgba), "PNG")
    assert (images.decode_image(data)[1:, 1:] == 255).all()
    kept = images.decode_image(data, keep_alpha=True)  # alpha is not lost
    np.testing.assert_array_equal(kept, rgba)
    # Images without alpha stay RGB when alpha is asked for.
    assert images.decode_image(png.tobytes(), keep_alpha=True).shape == (8, 8, 3)


def test_decode_applies_exif_orientation():
    im = Image.fromarray(np.zeros((10, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = images.decode_image(_encode(im, "JPEG", exif=exif.tobytes()))
    assert out.shape == (40, 10, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", images.UNREADABLE),
    (b"hello, I am a text file\n" * 10, images.NOT_AN_IMAGE),
])
def test_decode_rejects_garbage(data, reason):
    with pytest.raises(images.DecodeError) as e:
        images.decode_image(data)
    assert e.value.reason == reason


def test_decode_rejects_truncated_and_huge(faces_dir, monkeypatch):
    data = (faces_dir / "0.jpg").read_bytes()
    with pytest.raises(images.DecodeError) as e:
        images.decode_image(data[: len(data) // 2])
    assert e.value.reason == images.UNREADABLE
    # Even where a library told Pillow to pad truncated files with grey (TFDS does).
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(images.DecodeError, match="truncated"):
        images.decode_image(data[: len(data) - 200])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    with pytest.raises(images.DecodeError) as e:
        images.decode_image(data, max_pixels=100 * 100)
    assert e.value.reason == images.TOO_LARGE and "limit 10000" in str(e.value)


def test_read_image_errors_are_user_errors_naming_the_file(tmp_path, faces_dir):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes((faces_dir / "0.jpg").read_bytes()[:3000])
    with pytest.raises(errors.UserError) as e:
        images.read_image(bad)
    assert str(bad) in errors.one_line(e.value) and "unreadable" in str(e.value)
    with pytest.raises(errors.InputNotFoundError, match="no such file"):
        images.read_image(tmp_path / "missing.jpg")
    assert images.read_image(faces_dir / "0.jpg").shape[-1] == 3


# --- synthesis ----------------------------------------------------------------

def _align(analyzer, img, res=RES):
    f = largest_face(analyzer.detect(img))
    M = align.alignment_matrix(f.landmarks, res)
    return align.padded_crop(img, M, res).image, align.transform_landmarks(f.landmarks, M), M, f


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer(num_faces=2) as fa:
        yield fa


@pytest.fixture(scope="module")
def aligned(faces_dir, analyzer):
    """[(source_id, clean crop, crop landmarks)] for a few real faces."""
    out = []
    for name in PHOTOS:
        clean, lm, _, _ = _align(analyzer, _read(faces_dir / name))
        out.append((name, clean, lm))
    return out


@pytest.fixture(scope="module")
def library(occluders_dir):
    return occluders.OccluderLibrary(str(occluders_dir))


def _check_pair(clean, s: synth.Synthesis):
    m = s.mask[..., 0]
    clean = s.clean if s.clean is not None else clean
    assert s.occluded.dtype == np.uint8 and s.occluded.shape == clean.shape
    assert set(np.unique(m)) <= {0, 255}
    np.testing.assert_array_equal(m > 0, s.alpha[..., 0] > 0)
    # The invariant the model relies on: untouched wherever mask == 0, exactly.
    np.testing.assert_array_equal(s.occluded[m == 0], clean[m == 0])
    assert (m > 0).mean() > 0.01, s.category
    # ...and the occluder really changed something.
    assert (s.occluded != clean).any(axis=-1).mean() > 0.005


def _covered(mask, pts) -> float:
    return synth.landmark_coverage(mask[..., 0] > 0, pts)


def _eyes_clear(s: synth.Synthesis, lm) -> bool:
    """A face mask leaves the irises bare; a face shield only lets them show through."""
    irises = lm[[L.LEFT_IRIS, L.RIGHT_IRIS]]
    if s.wear and "shield" in s.wear:
        return synth.landmark_coverage(s.alpha[..., 0] >= 0.5 * 255, irises) == 0
    return _covered(s.mask, irises) == 0


@pytest.mark.parametrize("use_library", [False, True])
def test_every_category_keeps_the_pair_invariants(aligned, library, use_library):
    lib = library if use_library else None
    cats = occluders.ALL_CATEGORIES if use_library else procedural.PROCEDURAL_CATEGORIES
    for i, (sid, clean, lm) in enumerate(aligned):
        for cat in cats:
            cfg = synth.SynthConfig(weights={cat: 1.0}, shadow_prob=0.5, jpeg_prob=0.5)
            s = synth.synthesize(clean, lm, synth.variant_rng(i, sid, len(cat)), lib, cfg)
            _check_pair(clean, s)
            assert s.category in (cat, procedural.PROCEDURAL)


def test_jpeg_round_trip_is_shared_exact_and_keeps_masks_tight(aligned, library):
    sid, clean, lm = aligned[0]
    for v in range(4):
        plain = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library,
                                 synth.SynthConfig(jpeg_prob=0.0))
        cfg = synth.SynthConfig(jpeg_prob=1.0, jpeg_quality=(50, 50))
        s = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library, cfg)
        assert s.jpeg_quality == 50 and not np.array_equal(s.clean, clean)  # the clean target too
        _check_pair(clean, s)
        # Same draws, so the occluder is the same; the mask only gains edge ringing.
        grown = (s.mask > 0).sum() / max((plain.mask > 0).sum(), 1)
        assert 1.0 <= grown < 1.25, grown
        # Inside the occluder the compression shows (no pristine edges).
        inside = plain.mask[..., 0] > 0
        assert (s.occluded[inside] != plain.occluded[inside]).any(-1).mean() > 0.3


@pytest.mark.parametrize("image_share", [0.0, 1.0])
def test_face_masks_cover_the_mouth(aligned, library, image_share):
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, image_share=image_share)
    for i, (sid, clean, lm) in enumerate(aligned):
        for v in range(3):
            s = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library, cfg)
            assert s.category == "face_mask"
            assert s.occluder.startswith("procedural") == (image_share == 0.0)
            assert _covered(s.mask, lm[list(L.LIPS_OUTER)]) > 0.95, (sid, s.occluder)
            assert _eyes_clear(s, lm), (sid, s.occluder, s.kind)


@pytest.mark.parametrize("image_share", [0.0, 1.0])
def test_sunglasses_cover_the_eyes(aligned, library, image_share):
    cfg = synth.SynthConfig(weights={"sunglasses": 1.0}, image_share=image_share, shadow_prob=0.0)
    for sid, clean, lm in aligned:
        for v in range(3):
            s = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library, cfg)
            assert _covered(s.mask, lm[EYES]) > 0.9, (sid, s.occluder)
            assert _covered(s.mask, lm[[L.LOWER_LIP]]) == 0, (sid, s.occluder)


def test_synthesis_is_a_function_of_seed_source_and_variant(aligned, library):
    sid, clean, lm = aligned[0]
    cfg = synth.SynthConfig(jpeg_prob=0.5)
    a = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 1), library, cfg)
    b = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 1), library, cfg)
    c = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 2), library, cfg)
    np.testing.assert_array_equal(a.occluded, b.occluded)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert not np.array_equal(a.alpha, c.alpha)


def test_composite_with_shadow_is_exact_outside_the_mask():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:16, 8:16] = 1.0
    alpha[16, 8:16] = 0.001  # rounds to 0: must not change the pixel
    shadow = np.zeros((32, 32), np.float32)
    shadow[10:20, 10:20] = 0.3
    occ, a, m = synth.composite(clean, (np.ones((32, 32, 3), np.float32), alpha), shadow)
    assert (m[10:20, 10:20] == 255).all() and (m[16, 8:10] == 0).all()
    np.testing.assert_array_equal(occ[m[..., 0] == 0], clean[m[..., 0] == 0])
    assert (occ[18, 18] < clean[18, 18]).all() or (clean[18, 18] < 4).any()  # shadow darkens
    assert (occ[9, 9] == 255).all()


def test_category_weights_parse_and_validate():
    assert synth.parse_weights("face_mask=2,hand=1") == {"face_mask": 2.0, "hand": 1.0}
    with pytest.raises(ValueError, match="bad category weight"):
        synth.parse_weights("spaceship=1")
    with pytest.raises(ValueError, match="no occluder category"):
        synth.available_categories(None, {"hand": 1.0})  # hands need --occluders_dir


def test_occluder_library_version_and_anchors(library, occluders_dir):
    assert len(library.version) == 64
    masks = library.by_category["face_mask"]
    assert sum(m.anchors is not None for m in masks) >= 20
    assert {m.pose for m in masks} == {"frontal", "left", "right"}


# --- photometric realism ---------------------------------------------------------

def _edges(res=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = np.zeros((res * 4, res * 4), np.float32)
    for _ in range(30):
        c = rng.uniform(0, res * 4, 2).astype(int)
        axes = tuple(int(a) for a in rng.uniform(10, 80, 2))
        cv2.ellipse(big, (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(0, 1)), -1)
    return cv2.resize(big, (res, res), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_blur_and_noise_estimators_recover_known_values(sigma):
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(_edges(), (0, 0), sigma) + rng.normal(0, 0.01, (128, 128)).astype(np.float32)
    assert abs(synth.estimate_blur(img) - sigma) < 0.3 * sigma
    assert abs(synth.estimate_noise(img) - 0.01) < 0.003
    assert synth.estimate_blur(_edges()) < 0.8  # area-resampled, antialiased: sharp


def _occluder_region(s):
    m = s.mask[..., 0] > 0
    return cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def test_occluders_take_the_photos_blur_noise_and_light(aligned, library):
    """The same draw on a sharp, a blurred, a noisy and a dim version of one face."""
    sid, clean, lm = aligned[2]
    rng = np.random.default_rng(0)
    versions = {
        "sharp": clean,
        "blurred": cv2.GaussianBlur(clean, (0, 0), 2.0),
        "noisy": np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8),
        "dim": (clean * 0.45).astype(np.uint8),
    }
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, image_share=1.0, shadow_prob=0.0)
    out = {k: synth.synthesize(v, lm, synth.variant_rng(0, sid, 0), library, cfg)
           for k, v in versions.items()}
    gray = {k: cv2.cvtColor(s.occluded, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
            for k, s in out.items()}
    region = {k: _occluder_region(s) for k, s in out.items()}
    face_blur = synth.estimate_blur(gray["blurred"], ~region["blurred"])
    occluder_blur = {k: synth.estimate_blur(gray[k], region[k].astype(np.float32)) for k in out}
    assert occluder_blur["blurred"] > occluder_blur["sharp"] + 0.7, occluder_blur
    assert abs(occluder_blur["blurred"] - face_blur) < 0.5 * face_blur, (occluder_blur, face_blur)
    # Noise: the occluder carries the photo's grain (the mask image is smooth otherwise).
    face_noise = synth.estimate_noise(cv2.cvtColor(versions["noisy"], cv2.COLOR_RGB2GRAY) / 255.0)
    noise = {k: synth.estimate_noise(gray[k], region[k].astype(np.float32)) for k in ("sharp", "noisy")}
    assert noise["noisy"] > noise["sharp"] + 0.4 * face_noise and noise["noisy"] < 1.6 * face_noise
    # Light: the same mask is darker in the dim photo.
    lum = {k: float(gray[k][region[k]].mean()) for k in ("sharp", "dim")}
    assert lum["dim"] < 0.75 * lum["sharp"], lum


def test_shading_follows_the_face_light(aligned):
    """A face lit from the image-right gives a shading map brighter on that side."""
    sid, clean, lm = aligned[0]
    ramp = np.linspace(0.5, 1.3, RES, dtype=np.float32)[None, :, None]
    lit = np.clip(clean * ramp, 0, 255).astype(np.uint8)
    geo = geometry.FaceGeometry.from_landmarks(lm, RES)
    stats = synth.photo_stats(lit, geo)
    mouth = geo.mouth.astype(int)
    d = int(0.2 * geo.face_width)
    assert stats.shading[mouth[1], mouth[0] + d] > 1.15 * stats.shading[mouth[1], mouth[0] - d]
    assert stats.light_side > 0.1


# --- pose: occluders follow roll, yaw and pitch ----------------------------------

def _rotate(img: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated by deg (counter-clockwise), canvas grown; and the 2x3 map."""
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    c, s = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    M[0, 2] += nw / 2 - w / 2
    M[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(img, M, (nw, nh), borderMode=cv2.BORDER_REPLICATE), M


@pytest.mark.parametrize("angle", [-30, 30])
def test_occluders_follow_a_rotated_photo(faces_dir, analyzer, library, angle):
    """Truth from the upright photo: its landmarks, rotated, must fall under the occluder."""
    for name in PHOTOS[:4]:
        img = _read(faces_dir / name)
        upright = largest_face(analyzer.detect(img)).landmarks
        rotated, R = _rotate(img, angle)
        clean, lm, M, face = _align(analyzer, rotated)
        truth = align.transform_landmarks(align.transform_landmarks(upright, R), M)
        pose = L.head_pose(face.landmarks, L.canonical_face())
        assert abs(abs(pose.roll) - 30) < 12, (name, pose.roll)  # the landmarks did see the roll
        for v in range(2):
            for cat, share in (("face_mask", 0.0), ("face_mask", 1.0), ("sunglasses", 1.0)):
                cfg = synth.SynthConfig(weights={cat: 1.0}, image_share=share, shadow_prob=0.0)
                s = synth.synthesize(clean, lm, synth.variant_rng(angle, name, v), library, cfg)
                pts = truth[list(L.LIPS_OUTER)] if cat == "face_mask" else truth[EYES]
                assert _covered(s.mask, pts) > 0.9, (name, angle, s.occluder)


def test_profile_faces_are_really_turned(shared_dir, analyzer):
    lfw = shared_dir / "data" / "lfw"
    yaws = [L.head_pose(largest_face(analyzer.detect(_read(lfw / n))).landmarks, L.canonical_face()).yaw
            for n in PROFILE]
    assert all(30 < abs(y) < 50 for y in yaws), yaws
    assert min(yaws) < 0 < max(yaws)  # both directions


@pytest.mark.parametrize("category, image_share", [("face_mask", 0.0), ("face_mask", 1.0),
                                                   ("sunglasses", 0.0), ("sunglasses", 1.0),
                                                   ("eyeglasses", 0.0), ("eyeglasses", 1.0)])
def test_occluders_follow_turned_heads(shared_dir, analyzer, library, category, image_share):
    cfg = synth.SynthConfig(weights={category: 1.0}, image_share=image_share, shadow_prob=0.0)
    for name in PROFILE:
        clean, lm, _, _ = _align(analyzer, _read(shared_dir / "data" / "lfw" / name))
        geo = geometry.FaceGeometry.from_landmarks(lm, RES)
        for v in range(3):
            s = synth.synthesize(clean, lm, synth.variant_rng(1, name, v), library, cfg, geometry=geo)
            assert s.category == category, (name, s.occluder)
            if category == "face_mask":
                assert _covered(s.mask, lm[list(L.LIPS_OUTER)]) > 0.9, (name, s.occluder)
                assert _eyes_clear(s, lm), (name, s.occluder, s.kind)
            else:  # glasses enclose the eyes (clear lenses: inside the rims)
                region = synth._filled(s.mask[..., 0] > 0)
                assert synth.landmark_coverage(region, lm[EYES]) > 0.8, (name, s.occluder)


def test_glasses_turn_with_the_head(shared_dir, analyzer):
    """Procedural glasses on a turned head: the far lens is narrower than the near one."""
    name = PROFILE[0]
    clean, lm, _, _ = _align(analyzer, _read(shared_dir / "data" / "lfw" / name))
    geo = geometry.FaceGeometry.from_landmarks(lm, RES)
    layer = procedural.procedural_glasses(geo, np.random.default_rng(0), sunglasses=True)
    filled = synth._filled(layer[1] > 0.5)
    cols = filled.any(0)
    mid = int(round(float(np.dot(geo.eye_mid, [1, 0]))))
    widths = (cols[:mid].sum(), cols[mid:].sum())
    # Patrick Stewart's nose points image-right (yaw < 0): the image-right lens is the far one.
    assert geo.pose.yaw < -25 and widths[1] < 0.85 * widths[0], widths


# --- plausibility ---------------------------------------------------------------

def test_head_pose_recovers_known_rotations():
    face = L.canonical_face()

    def rot(yaw, pitch, roll):
        y, p, r = np.radians([yaw, pitch, roll])
        rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
        ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
        return rz @ ry @ rx

    for angles in ((30, 0, 0), (-40, 12, -5), (10, -20, 25)):
        pts = (face.vertices @ rot(*angles).T)[:, :2] * 4 + 64
        pose = L.head_pose(np.concatenate([pts, np.zeros((10, 2))]), face)
        np.testing.assert_allclose((pose.yaw, pose.pitch, pose.roll), angles, atol=1e-6)
        assert pose.error < 1e-9


def _check(lm, outside=None, **kw):
    cfg = config_lib.PrepConfig(**kw)
    outside = np.zeros((RES, RES), bool) if outside is None else outside
    return alignment.check_face(lm, outside, L.head_pose(lm, L.canonical_face()), cfg)


def test_implausible_landmarks_are_rejected(aligned):
    for sid, clean, lm in aligned:
        assert _check(lm) is None, sid
    sid, clean, lm = aligned[0]
    # A face whose mouth sits on its forehead (what an upside-down misfit looks like).
    bad = lm.copy()
    mouth = list(set(L.LIPS_OUTER) | {13, 14, 17, 0, 78, 308, 80, 310, 81, 311, 82, 312})
    bad[mouth] -= np.array([0.0, 0.55 * RES])
    reason, detail = _check(bad)
    assert reason == alignment.IMPLAUSIBLE_LANDMARKS and "do not pose as a face" in detail
    # Landmarks scattered by noise.
    noisy = lm + np.random.default_rng(0).normal(0, 0.06 * RES, lm.shape)
    assert _check(noisy)[0] == alignment.IMPLAUSIBLE_LANDMARKS
    # A plausible but turned face, beyond the configured limit.
    reason, detail = _check(lm, max_yaw=1.0, max_landmark_error=10)
    assert reason == alignment.IMPLAUSIBLE_LANDMARKS and "--max_yaw=1" in detail
    assert _check(lm, max_pitch=1.0)[0] == alignment.IMPLAUSIBLE_LANDMARKS


def test_insufficient_context(aligned):
    sid, clean, lm = aligned[0]
    outside = np.zeros((RES, RES), bool)
    outside[:, :52] = True  # 40% of the crop, including a cheek
    reason, detail = _check(lm, outside, max_padding=0.2)
    assert reason == alignment.INSUFFICIENT_CONTEXT and "--max_padding=0.2" in detail
    reason, detail = _check(lm, outside, max_padding=0.5)
    assert reason == alignment.INSUFFICIENT_CONTEXT and "face itself" in detail
    side = np.zeros((RES, RES), bool)
    side[:, :8] = True  # background only
    assert _check(lm, side, max_padding=0.5) is None


# --- groups and splits -----------------------------------------------------------

def test_tiny_datasets_get_every_split():
    splits = config_lib.parse_splits("train=0.9,validation=0.05,test=0.05")
    ids = [f"img{i}.jpg" for i in range(10)]
    th = plan.split_thresholds(ids, splits)
    counts = {n: sum(plan.split_of(s, th) == n for s in ids) for n, _ in splits}
    assert counts == {"train": 8, "validation": 1, "test": 1}


def test_split_fractions_on_many_ids():
    splits = config_lib.parse_splits("train=0.8,validation=0.1,test=0.1")
    ids = [f"dir/{i:05d}.png" for i in range(2000)]
    th = plan.split_thresholds(ids, splits)
    counts = {n: sum(plan.split_of(s, th) == n for s in ids) for n, _ in splits}
    assert counts == {"train": 1600, "validation": 200, "test": 200}
    # Adding photos moves few existing ones between splits.
    th2 = plan.split_thresholds(ids + [f"new/{i}.png" for i in range(100)], splits)
    moved = sum(plan.split_of(s, th) != plan.split_of(s, th2) for s in ids)
    assert moved < 0.05 * len(ids)


def test_bad_split_specs():
    for spec in ("train=0.5,test=0.2", "train", "train=1,train=0", "train=x"):
        with pytest.raises(errors.InvalidInputError, match="--splits"):
            config_lib.parse_splits(spec)


def test_group_by_names_a_person():
    rx = r"^lfw/(.+)_\d{4}\.jpg$"
    assert sources.group_of("lfw/Aaron_Eckhart_0001.jpg", rx) == sources.group_of(
        "lfw/Aaron_Eckhart_0002.jpg", rx) == "group:Aaron_Eckhart"
    assert sources.group_of("utkface/15_0_0_2017.jpg.chip.jpg", rx) is None  # its own group
    assert sources.group_of("x.jpg", None) is None


def test_merge_groups_joins_names_and_near_duplicates():
    keys = ["a1", "a2", "b", "c", "d"]
    named = ["group:A", "group:A", "b", "c", "d"]
    out = plan.merge_groups(keys, named, [(2, 3)])  # b and c are near-duplicates
    assert out["a1"] == out["a2"] == "group:A"
    assert out["b"] == out["c"] == "b" and out["d"] == "d"


def test_near_duplicates_found_on_real_faces(faces_dir, analyzer):
    """A photo and its mirrored, rescaled, recoloured, noisy copy are one group; others not."""
    img = _read(faces_dir / "100.jpg")
    h, w = img.shape[:2]
    copy = cv2.resize(img[:, ::-1][10:, 5:], (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA)
    copy = np.clip(copy * np.array([1.1, 0.95, 0.9]) + 12
                   + np.random.default_rng(0).normal(0, 4, copy.shape), 0, 255).astype(np.uint8)
    copy, _ = _rotate(copy, 12)
    crops = [_align(analyzer, x)[0] for x in (img, copy)]
    crops += [_align(analyzer, _read(faces_dir / n))[0] for n in ("0.jpg", "10.jpg", "105.jpg", "11.jpg")]
    d = np.stack([plan.descriptor(c) for c in crops])
    pairs = plan.near_duplicate_pairs(d, config_lib.PrepConfig().near_duplicates)
    assert pairs == [(0, 1)], pairs


def test_make_plan_puts_a_group_in_one_split():
    rng = np.random.default_rng(0)
    desc = [(v / np.linalg.norm(v)).astype(np.float16) for v in rng.normal(size=(40, 1024))]
    entries = [(f"p{i // 4}/{i}.jpg", f"group:p{i // 4}", desc[i], 2) for i in range(40)]
    made = plan.make_plan(entries, config_lib.PrepConfig(splits=(("train", 0.5), ("test", 0.5))),
                          None)
    by_group = {}
    for key, *_ in entries:
        by_group.setdefault(key.split("/")[0], set()).add(made.split(key))
    assert all(len(s) == 1 for s in by_group.values())
    assert made.stats["groups"] == 10 and made.stats["named_groups_with_several_faces"] == 10
    assert set(made.shards) == {"train", "test"}


# --- input listing --------------------------------------------------------------

def test_listing_follows_no_loops_and_counts_every_entry(tmp_path, faces_dir):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for n in ("0.jpg", "1.jpg"):
        (d / "sub" / n).write_bytes((faces_dir / n).read_bytes())
    os.symlink(".", d / "loop")                       # a folder loop
    os.symlink("sub/0.jpg", d / "same.jpg")           # the same file twice
    os.symlink("nowhere.jpg", d / "dangling.jpg")     # a broken link
    os.symlink("self.jpg", d / "self.jpg")            # a file link loop
    os.symlink(str(d / "sub"), d / "sub_again")       # a folder reached twice
    (d / "notes.txt").write_text("not a photo")
    found, skipped = sources.list_sources([str(d)])
    assert [s.source_id for s in found] == ["sub/0.jpg", "sub/1.jpg"]
    reasons = {s.source_id: s.reason for s in skipped}
    assert reasons == {"loop": sources.LINK_LOOP, "same.jpg": sources.DUPLICATE,
                       "dangling.jpg": sources.BROKEN_LINK, "self.jpg": sources.BROKEN_LINK,
                       "sub_again/0.jpg": sources.DUPLICATE, "sub_again/1.jpg": sources.DUPLICATE,
                       "notes.txt": sources.UNSUPPORTED_EXTENSION}


def test_listing_non_utf8_names_and_globs(tmp_path, faces_dir):
    d = tmp_path / "in"
    d.mkdir()
    raw = os.path.join(os.fsencode(str(d)), b"caf\xe9.jpg")
    with open(raw, "wb") as f:
        f.write((faces_dir / "0.jpg").read_bytes())
    (d / "b.png").write_bytes(b"x")
    found, skipped = sources.list_sources([str(d)])
    ids = [s.source_id for s in found]
    assert ids == ["b.png", "caf\\xe9.jpg"] and not skipped
    ids[1].encode("utf-8")  # printable, storable
    assert os.path.exists(found[1].locator)  # but still opens the real file
    only_jpg, _ = sources.list_sources([str(d / "*.jpg")])
    assert [s.source_id for s in only_jpg] == ["caf\\xe9.jpg"]


def test_several_inputs_are_prefixed(tmp_path, faces_dir):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "0.jpg").write_bytes((faces_dir / "0.jpg").read_bytes())
    found, _ = sources.list_sources([str(tmp_path / "a"), str(tmp_path / "b")], r"^(a)/")
    assert [(s.source_id, s.group) for s in found] == [("a/0.jpg", "group:a"), ("b/0.jpg", None)]
    with pytest.raises(errors.InputNotFoundError, match="does not exist"):
        sources.list_sources([str(tmp_path / "nope")])


def test_pairs_match_by_name_maskedface_net_layout():
    index = {"00012": ("clean/00012.png", "/c/00012.png"), "00012_b": ("clean/00012_b.png", "/x"),
             "Aaron_Eckhart_0001": ("lfw/Aaron_Eckhart_0001.jpg", "/y")}
    assert sources.match_clean("CMFD/00000/00012_Mask.jpg", index)[0] == "clean/00012.png"
    assert sources.match_clean("IMFD/00012_Mask_Mouth_Chin.jpg", index)[0] == "clean/00012.png"
    assert sources.match_clean("00012_b_Mask.jpg", index)[0] == "clean/00012_b.png"  # longest
    assert sources.match_clean("Aaron_Eckhart_0001.jpg", index)[0] == "lfw/Aaron_Eckhart_0001.jpg"
    assert sources.match_clean("00013_Mask.jpg", index) is None


# --- flags (one place for defaults) --------------------------------------------------

@pytest.mark.parametrize("kw, flag", [
    (dict(resolution=100), "--resolution"), (dict(resolution=17), "--resolution"),
    (dict(resolution=0), "--resolution"), (dict(variants_per_face=0), "--variants_per_face"),
    (dict(max_padding=1.5), "--max_padding"), (dict(jpeg_prob=2.0), "--jpeg_prob"),
    (dict(jpeg_quality="90,10"), "--jpeg_quality"), (dict(group_by="(unclosed"), "--group_by"),
    (dict(category_weights="hand=-1"), "--category_weights"), (dict(splits="train=2"), "--splits"),
    (dict(near_duplicates=3.0), "--near_duplicates"),
])
def test_bad_flags_are_named_before_anything_runs(kw, flag):
    with pytest.raises(errors.InvalidInputError, match=flag):
        config_lib.make_config(**kw)


def test_resolutions_the_models_accept():
    for r in (32, 64, 128, 256, 512):
        assert config_lib.make_config(resolution=r).resolution == r


def test_flag_defaults_come_from_prep_config():
    from absl import flags
    fv = flags.FlagValues()
    prep_flags.define_prep_flags(fv)
    cfg = config_lib.PrepConfig()
    for name in prep_flags.CONFIG_FLAGS:
        if name == "category_weights":
            continue
        value = fv[name].default
        if name == "splits":
            value = config_lib.parse_splits(value)
        elif name == "jpeg_quality":
            value = tuple(int(x) for x in value.split(","))
        assert value == getattr(cfg, name), name
    assert config_lib.make_config() == cfg
    assert math.isclose(cfg.max_padding, 0.65)


def test_outputs_that_touch_the_input_are_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    cfg = config_lib.PrepConfig()
    with pytest.raises(errors.OutputExistsError, match="inside the input"):
        build_lib._check_paths([str(tmp_path / "photos")], str(tmp_path / "photos" / "ds"), cfg, None)
    with pytest.raises(errors.OutputExistsError, match="contains the input"):
        build_lib._check_paths([str(tmp_path / "photos")], str(tmp_path), cfg, None)
    with pytest.raises(errors.InvalidInputError, match="--num_shards"):
        build_lib._check_paths([str(tmp_path / "photos")], str(tmp_path / "ds"), cfg, -2)
    assert pathlib.Path(tmp_path / "photos").is_dir()


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
    crop, lm = face
    no_wear = mask_wear.WearProbs(light=0, pleats=0, valve=0, straps=0, shield=0)
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, mask_style_prob=1.0, shadow_prob=0.0,
                            mask_wear=no_wear)
    geo = geometry.FaceGeometry.from_landmarks(lm, 128)
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
    assert len(patterns) >= 5 and colourings == set(mask_styles.MASK_COLOURINGS)
    assert "plain/as_drawn" not in kinds
    # Off: nothing is drawn, so the pairs are those of a build without styles.
    off = synth.SynthConfig(weights={"face_mask": 1.0}, mask_style_prob=0.0, mask_wear=no_wear)
    s = synth.synthesize(crop, lm, synth.variant_rng(7, "x", 0), None, off, geometry=geo)
    assert s.style is None and s.kind == "face_mask"


@pytest.mark.parametrize("pattern", ["dots", "stripes", "checks", "camouflage", "text"])
def test_mask_prints_mark_part_of_the_mask(face, pattern):
    crop, lm = face
    geo = geometry.FaceGeometry.from_landmarks(lm, 128)
    layer = procedural.procedural_face_mask(geo, np.random.default_rng(0))
    inside = layer[1] > 0.5
    ink = mask_styles.mask_print(pattern, geo, np.random.default_rng(1))
    share = float((ink[inside] > 0.5).mean())
    assert 0.03 < share < 0.8, share
    styled = mask_styles.restyle_mask(layer, geo, np.random.default_rng(2),
                                      mask_styles.MaskStyle(pattern, "dark"))
    np.testing.assert_array_equal(styled[1], layer[1])   # the shape is kept
    lum = styled[0] @ np.array([0.299, 0.587, 0.114], np.float32)
    # Printed: the ink shows against the cloth.
    assert lum[inside].std() > 0.08
    assert not mask_styles.mask_print("plain", geo, np.random.default_rng(1)).any()
    with pytest.raises(ValueError, match="unknown mask print"):
        mask_styles.mask_print("floral", geo, np.random.default_rng(1))


def test_dark_and_saturated_cloth(face):
    crop, lm = face
    geo = geometry.FaceGeometry.from_landmarks(lm, 128)
    layer = procedural.procedural_face_mask(geo, np.random.default_rng(3))
    inside = layer[1] > 0.5
    for seed in range(5):
        dark = mask_styles.restyle_mask(layer, geo, np.random.default_rng(seed),
                                        mask_styles.MaskStyle("plain", "dark"))
        lum = dark[0] @ np.array([0.299, 0.587, 0.114], np.float32)
        assert np.median(lum[inside]) < metrics.DARK_OCCLUDER_LUMA
        vivid = mask_styles.restyle_mask(layer, geo, np.random.default_rng(seed),
                                         mask_styles.MaskStyle("plain", "saturated"))
        hsv = cv2.cvtColor((vivid[0] * 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        assert np.median(hsv[..., 1][inside]) > 150
