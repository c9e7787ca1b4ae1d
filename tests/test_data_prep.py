"""data_prep units: robust decoding, occlusion synthesis invariants, splits."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep import decode, occluders, pipeline, synth
from deocc_jax.faces import FaceAnalyzer, align, largest_face
from deocc_jax.faces import landmarks as L

RES = 128
PHOTOS = ("0.jpg", "1.jpg", "10.jpg", "100.jpg", "105.jpg", "11.jpg")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# --- decoding ----------------------------------------------------------------

def test_decode_modes_to_rgb_uint8():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = (200, 10, 10)
    for im, fmt in [(Image.fromarray(rgb), "PNG"),
                    (Image.fromarray(rgb).convert("L"), "PNG"),
                    (Image.fromarray(rgb).convert("RGBA"), "PNG"),
                    (Image.fromarray(rgb).convert("P"), "PNG"),
                    (Image.fromarray(rgb).convert("CMYK"), "JPEG"),
                    (Image.fromarray(rgb).convert("CMYK"), "TIFF")]:
        out = decode.decode_image(_encode(im, fmt))
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3), (im.mode, fmt)
        assert out[5, 20].max() < 40 and out[5, 2].max() > 60, (im.mode, fmt, out[5, 2])


def test_decode_16bit_and_alpha_over_white():
    g16 = np.full((8, 8), 65535 // 2, np.uint16)
    ok, png = cv2.imencode(".png", g16)
    out = decode.decode_image(png.tobytes())
    assert out.shape == (8, 8, 3) and abs(int(out[0, 0, 0]) - 128) <= 1
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black -> white
    assert (decode.decode_image(_encode(Image.fromarray(rgba), "PNG")) == 255).all()


def test_decode_applies_exif_orientation():
    im = Image.fromarray(np.zeros((10, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode.decode_image(_encode(im, "JPEG", exif=exif.tobytes()))
    assert out.shape == (40, 10, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", decode.UNREADABLE),
    (b"hello, I am a text file\n" * 10, decode.NOT_AN_IMAGE),
])
def test_decode_rejects_garbage(data, reason):
    with pytest.raises(decode.DecodeError) as e:
        decode.decode_image(data)
    assert e.value.reason == reason


def test_decode_rejects_truncated_and_huge(faces_dir):
    data = (faces_dir / "0.jpg").read_bytes()
    with pytest.raises(decode.DecodeError) as e:
        decode.decode_image(data[: len(data) // 2])
    assert e.value.reason == decode.UNREADABLE
    with pytest.raises(decode.DecodeError) as e:
        decode.decode_image(data, max_pixels=100 * 100)
    assert e.value.reason == decode.TOO_LARGE and "limit 10000" in str(e.value)


# --- synthesis ----------------------------------------------------------------

@pytest.fixture(scope="module")
def aligned(faces_dir):
    """[(source_id, clean crop, crop landmarks)] for a few real faces."""
    out = []
    with FaceAnalyzer(num_faces=2) as fa:
        for name in PHOTOS:
            img = cv2.cvtColor(cv2.imread(str(faces_dir / name)), cv2.COLOR_BGR2RGB)
            f = largest_face(fa.detect(img))
            M = align.alignment_matrix(f.landmarks, RES)
            out.append((name, align.warp_to_crop(img, M, RES), align.transform_landmarks(f.landmarks, M)))
    return out


@pytest.fixture(scope="module")
def library(occluders_dir):
    return occluders.OccluderLibrary(str(occluders_dir))


def _check_pair(clean, s: synth.Synthesis):
    m = s.mask[..., 0]
    assert s.occluded.dtype == np.uint8 and s.occluded.shape == clean.shape
    assert set(np.unique(m)) <= {0, 255}
    np.testing.assert_array_equal(m > 0, s.alpha[..., 0] > 0)
    # The invariant the model relies on: untouched wherever mask == 0, exactly.
    np.testing.assert_array_equal(s.occluded[m == 0], clean[m == 0])
    assert (m > 0).mean() > 0.01, s.category
    # ...and the occluder really changed something.
    assert (s.occluded != clean).any(axis=-1).mean() > 0.005


def _covered(mask, pts) -> float:
    p = np.clip(np.rint(pts), 0, mask.shape[0] - 1).astype(int)
    return float((mask[p[:, 1], p[:, 0], 0] > 0).mean())


@pytest.mark.parametrize("use_library", [False, True])
def test_every_category_keeps_the_pair_invariants(aligned, library, use_library):
    lib = library if use_library else None
    cats = occluders.ALL_CATEGORIES if use_library else occluders.PROCEDURAL_CATEGORIES
    for i, (sid, clean, lm) in enumerate(aligned):
        for cat in cats:
            cfg = synth.SynthConfig(weights={cat: 1.0}, shadow_prob=0.5)
            s = synth.synthesize(clean, lm, synth.variant_rng(i, sid, len(cat)), lib, cfg)
            _check_pair(clean, s)
            assert s.category in (cat, occluders.PROCEDURAL)


@pytest.mark.parametrize("image_share", [0.0, 1.0])
def test_face_masks_cover_the_mouth(aligned, library, image_share):
    cfg = synth.SynthConfig(weights={"face_mask": 1.0}, image_share=image_share)
    for i, (sid, clean, lm) in enumerate(aligned):
        for v in range(3):
            s = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library, cfg)
            assert s.category == "face_mask"
            assert s.occluder.startswith("procedural") == (image_share == 0.0)
            assert _covered(s.mask, lm[list(L.LIPS_OUTER)]) > 0.95, (sid, s.occluder)
            assert _covered(s.mask, lm[[L.LEFT_IRIS, L.RIGHT_IRIS]]) == 0, (sid, s.occluder)


@pytest.mark.parametrize("image_share", [0.0, 1.0])
def test_sunglasses_cover_the_eyes(aligned, library, image_share):
    cfg = synth.SynthConfig(weights={"sunglasses": 1.0}, image_share=image_share, shadow_prob=0.0)
    eyes = list(L.LEFT_EYE_CONTOUR + L.RIGHT_EYE_CONTOUR)
    for sid, clean, lm in aligned:
        for v in range(3):
            s = synth.synthesize(clean, lm, synth.variant_rng(0, sid, v), library, cfg)
            assert _covered(s.mask, lm[eyes]) > 0.9, (sid, s.occluder)
            assert _covered(s.mask, lm[[L.LOWER_LIP]]) == 0, (sid, s.occluder)


def test_synthesis_is_a_function_of_seed_source_and_variant(aligned, library):
    sid, clean, lm = aligned[0]
    a = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 1), library)
    b = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 1), library)
    c = synth.synthesize(clean, lm, synth.variant_rng(3, sid, 2), library)
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


# --- splits -------------------------------------------------------------------

def test_tiny_datasets_get_every_split():
    splits = pipeline.parse_splits("train=0.9,validation=0.05,test=0.05")
    ids = [f"img{i}.jpg" for i in range(10)]
    th = pipeline.split_thresholds(ids, splits)
    counts = {n: sum(pipeline.split_of(s, th) == n for s in ids) for n, _ in splits}
    assert counts == {"train": 8, "validation": 1, "test": 1}


def test_split_fractions_on_many_ids():
    splits = pipeline.parse_splits("train=0.8,validation=0.1,test=0.1")
    ids = [f"dir/{i:05d}.png" for i in range(2000)]
    th = pipeline.split_thresholds(ids, splits)
    counts = {n: sum(pipeline.split_of(s, th) == n for s in ids) for n, _ in splits}
    assert counts == {"train": 1600, "validation": 200, "test": 200}
    # Adding photos moves few existing ones between splits.
    th2 = pipeline.split_thresholds(ids + [f"new/{i}.png" for i in range(100)], splits)
    moved = sum(pipeline.split_of(s, th) != pipeline.split_of(s, th2) for s in ids)
    assert moved < 0.05 * len(ids)


def test_bad_split_specs():
    for spec in ("train=0.5,test=0.2", "train", "train=1,train=0"):
        with pytest.raises(ValueError):
            pipeline.parse_splits(spec)
