"""Face-aware metrics (expression, landmark NME, identity) on real aligned LFW crops.

Each metric is shown to fail where it should: perfect on the clean image,
worse on an occluded input, worse for another person's face (identity) and for
another expression pasted into the mouth (expression). Photos are read from
../shared and aligned here; none is stored in the repository.
"""

import pathlib
import sys

import cv2
import numpy as np
import pytest

from deocc_jax import errors
from deocc_jax.evaluation import face_metrics
from deocc_jax.evaluation.face_metrics import EXPRESSION, IDENTITY, LANDMARKS, FaceMetrics
from deocc_jax.faces import align, detect, largest_face

REPO = pathlib.Path(__file__).resolve().parents[1]
RES = 128
# LFW people chosen by eye: two neutral closed mouths, one broad open smile.
NEUTRAL_A = "Alan_Mulally_0001.jpg"
NEUTRAL_B = "Antonio_Bernardo_0001.jpg"
SMILING = "Adolfo_Rodriguez_Saa_0001.jpg"
PHOTOS = (NEUTRAL_A, NEUTRAL_B, SMILING)
GREY_BLUE = (90, 140, 200)


def _template_mask(res: int, centre, half_axes) -> np.ndarray:
    """bool [res, res] ellipse in FFHQ-template units (the crops are aligned to it)."""
    m = np.zeros((res, res), np.uint8)
    cv2.ellipse(m, (round(centre[0] * res), round(centre[1] * res)),
                (round(half_axes[0] * res), round(half_axes[1] * res)), 0, 0, 360, 255, -1)
    return m > 0


def mouth_occluder(res: int) -> np.ndarray:
    """A face-mask-like region from below the nose to the chin (template mouth at y = 0.725)."""
    return _template_mask(res, (0.5, 0.77), (0.24, 0.15))


def occlude(crops: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = crops.copy()
    out[:, mask] = GREY_BLUE
    return out


def rerender(crop: np.ndarray, quality: int = 60) -> np.ndarray:
    """The same photo again: slightly blurred and JPEG re-encoded."""
    blurred = cv2.GaussianBlur(crop, (3, 3), 0.6)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(blurred, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def paste_mouth(target: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """`target` with the mouth region of `donor` (both aligned crops), feathered edges."""
    res = target.shape[0]
    m = _template_mask(res, (0.5, 0.75), (0.2, 0.12)).astype(np.float32)
    m = cv2.GaussianBlur(m, (0, 0), res / 64)[..., None]
    return np.round(m * donor + (1 - m) * target).astype(np.uint8)


@pytest.fixture(scope="module")
def crops(shared_dir) -> dict[str, np.ndarray]:
    """Aligned RES px crops of PHOTOS, by name."""
    out = {}
    with detect.FaceAnalyzer() as fa:
        for name in PHOTOS:
            path = shared_dir / "data" / "lfw" / name
            img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            face = largest_face(fa.detect(img))
            assert face is not None, path
            out[name] = align.warp_to_crop(img, align.alignment_matrix(face.landmarks, RES), RES)
    return out


@pytest.fixture(scope="module")
def fm():
    # identity=True: the extra is in requirements-dev.txt, so its absence must fail, not skip.
    with FaceMetrics(identity=True) as m:
        yield m


@pytest.fixture(scope="module")
def clean(crops):
    return np.stack([crops[n] for n in PHOTOS])


@pytest.fixture(scope="module")
def mask(clean):
    m = np.zeros(clean.shape[:3] + (1,), np.uint8)
    m[:, mouth_occluder(RES)] = 255
    return m


@pytest.fixture(scope="module")
def ref(fm, clean, mask):
    return fm.reference(clean, mask)


def test_blendshapes_are_optional_in_face_analyzer(crops):
    with detect.FaceAnalyzer() as fa:
        assert fa.detect(crops[SMILING])[0].blendshapes is None  # existing callers: unchanged
    with detect.FaceAnalyzer(blendshapes=True) as fa:
        smile = fa.detect(crops[SMILING])[0].blendshapes
        neutral = fa.detect(crops[NEUTRAL_A])[0].blendshapes
    assert smile.shape == (52,) and smile.dtype == np.float32
    assert len(detect.BLENDSHAPE_NAMES) == 52 and ((smile >= 0) & (smile <= 1)).all()
    s = [detect.BLENDSHAPE_NAMES.index(k) for k in ("mouthSmileLeft", "mouthSmileRight", "jawOpen")]
    assert (smile[s] > neutral[s] + 0.1).all(), (smile[s], neutral[s])


def test_clean_scores_perfect(fm, ref, clean):
    r = fm.per_image(ref, clean)
    assert ref.found.all() and r["face_found"].all()
    assert ref.in_mask.sum(1).min() > 20  # the mouth occluder covers many landmarks
    for m in (EXPRESSION, LANDMARKS, IDENTITY):
        np.testing.assert_array_equal(r[m], 0.0, err_msg=m)
    agg = fm.aggregate(r)
    assert agg[IDENTITY] == 0.0 and agg[f"{IDENTITY}_found"] == 3 and agg["faces_missing"] == 0


def test_occluded_input_scores_worse(fm, ref, clean, mask):
    occ = fm.per_image(ref, occlude(clean, mask[0, ..., 0] > 0))
    same = fm.per_image(ref, np.stack([rerender(c) for c in clean]))
    assert occ["face_found"].all()
    for m in (EXPRESSION, LANDMARKS, IDENTITY):
        assert (occ[m] > 0).all(), (m, occ[m])
        # Re-rendering the clean photo changes pixels everywhere yet scores better.
        assert np.mean(same[m]) < np.mean(occ[m]), (m, same[m], occ[m])
    assert (occ[LANDMARKS] > 0.02).all() and (occ[IDENTITY] > 0.2).all(), occ
    # Under the mask MediaPipe guesses a neutral mouth: right for the neutral faces (their
    # error stays near the re-rendering's, ~0.02), clearly wrong for the smile.
    i = PHOTOS.index(SMILING)
    assert occ[EXPRESSION][i] > 0.05 and occ[EXPRESSION][i] > 2 * same[EXPRESSION][i], occ


def test_wrong_person_scores_worse_than_same_person(fm, ref, clean):
    same = fm.per_image(ref, np.stack([rerender(c) for c in clean]))[IDENTITY]
    other = fm.per_image(ref, np.roll(clean, 1, axis=0))[IDENTITY]
    # dlib's threshold for "same person" is 0.6.
    assert (same < 0.3).all() and (other > 0.6).all(), (same, other)


def test_expression_change_scores_worse_than_none(fm, crops):
    target = crops[NEUTRAL_A]
    smile = paste_mouth(target, crops[SMILING])      # another expression
    neutral = paste_mouth(target, crops[NEUTRAL_B])  # another person's mouth, same expression
    m = np.zeros((2, RES, RES, 1), np.uint8)
    m[:, mouth_occluder(RES)] = 255
    ref = fm.reference(np.stack([target, target]), m)
    r = fm.per_image(ref, np.stack([neutral, smile]))
    # Both pastes change the pixels about as much; only one changes the expression.
    px = [np.abs(x.astype(float) - target).mean() for x in (neutral, smile)]
    assert px[0] > 0.7 * px[1], px
    assert r[EXPRESSION][1] > 0.04 and r[EXPRESSION][1] > 2 * r[EXPRESSION][0], r[EXPRESSION]
    assert r[LANDMARKS][1] > 1.5 * r[LANDMARKS][0], r[LANDMARKS]


def test_missing_faces_are_nan_and_counted(fm, clean, mask):
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (RES, RES))
    ref = fm.reference(np.stack([clean[0], texture, clean[2]]), mask)
    assert ref.found.tolist() == [True, False, True]
    restored = np.stack([texture, clean[1], occlude(clean[2:], mask[0, ..., 0] > 0)[0]])
    r = fm.per_image(ref, restored)
    assert r["face_found"].tolist() == [False, True, True]
    # No face in the output: expression and landmarks missing; identity still measured
    # with the clean face's alignment (a texture is far from the person).
    assert np.isnan(r[EXPRESSION][0]) and np.isnan(r[LANDMARKS][0]) and r[IDENTITY][0] > 0.6
    assert np.isnan([r[k][1] for k in (EXPRESSION, LANDMARKS, IDENTITY)]).all()  # no clean face
    agg = fm.aggregate(r)
    assert agg["clean_faces_missing"] == 1 and agg["faces_missing"] == 1
    assert agg[f"{EXPRESSION}_found"] == 1 and agg[f"{EXPRESSION}_missing"] == 2
    assert agg[EXPRESSION] == pytest.approx(float(r[EXPRESSION][2]))
    assert agg[f"{IDENTITY}_found"] == 2
    # Comparing methods on the same faces: only image 2 has an expression for both.
    r_clean = fm.per_image(ref, np.stack([clean[0], clean[1], clean[2]]))
    common = face_metrics.found_in_all([r, r_clean])
    assert common.tolist() == [False, False, True]
    assert fm.aggregate(r_clean, select=common)[f"{EXPRESSION}_found"] == 1


def test_batches_equal_the_whole(fm, ref, clean, mask):
    occ = occlude(clean, mask[0, ..., 0] > 0)
    whole = fm.per_image(ref, occ)
    parts = [fm.per_image(ref.subset(slice(a, b)), occ[a:b]) for a, b in ((0, 2), (2, 3))]
    for k in (EXPRESSION, LANDMARKS, IDENTITY, "face_found"):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k], err_msg=k)


def test_identity_unavailable_is_stated_and_the_rest_carries_on(monkeypatch, crops):
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match="pip install dlib-bin==20.0.1.post1"):
        FaceMetrics(identity=True)
    small = np.stack([cv2.resize(crops[n], (64, 64), interpolation=cv2.INTER_AREA) for n in PHOTOS])
    m = np.zeros((3, 64, 64, 1), np.uint8)
    m[:, mouth_occluder(64)] = 255
    with FaceMetrics(identity="auto") as fm64:
        assert fm64.metrics == (EXPRESSION, LANDMARKS)
        ref = fm64.reference(small, m)
        r = fm64.per_image(ref, occlude(small, m[0, ..., 0] > 0))
        agg = fm64.aggregate(r)
        text = fm64.describe()
    assert IDENTITY not in r and (r[EXPRESSION] > 0).all() and (r[LANDMARKS] > 0).all()
    assert agg[IDENTITY] is None and face_metrics.IDENTITY_INSTALL in agg[f"{IDENTITY}_unavailable"]
    assert agg[f"{EXPRESSION}_found"] == 3
    assert face_metrics.IDENTITY_INSTALL in text


def test_bad_input_is_refused(fm, ref, clean):
    with pytest.raises(errors.InvalidInputError, match="uint8"):
        fm.per_image(ref, clean.astype(np.float32))
    with pytest.raises(errors.InvalidInputError, match="reference was made at 128"):
        fm.per_image(ref, clean[:, :64, :64])
    with pytest.raises(errors.InvalidInputError, match="3 crops for a reference of 2"):
        fm.per_image(ref.subset(slice(0, 2)), clean)
    with pytest.raises(errors.InvalidInputError, match="mask"):
        fm.reference(clean, np.zeros((3, 64, 64, 1), np.uint8))


def test_requirements_eval_pins_the_identity_extra():
    lines = (REPO / "requirements-eval.txt").read_text().splitlines()
    pins = {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}
    assert set(face_metrics.IDENTITY_PACKAGES) <= pins
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements-eval.txt" in dev  # CI installs it, so the identity tests run there


# --------------------------------------------------------------------------- identity vs the input


def test_closer_share():
    d = np.array([0.3, 0.5, np.nan, 0.2, 0.4])
    ref = np.array([0.4, 0.4, 0.1, np.nan, 0.5])
    assert face_metrics.closer_share(d, ref) == (pytest.approx(2 / 3), 3)
    assert face_metrics.closer_share(d, ref, np.array([0, 1, 1, 1, 0], bool)) == (0.0, 1)
    assert face_metrics.closer_share(d, d) == (0.0, 4)   # the input against itself
    assert face_metrics.closer_share(d[:0], ref[:0]) == (None, 0)
    with pytest.raises(ValueError, match="shape"):
        face_metrics.closer_share(d, ref[:2])
