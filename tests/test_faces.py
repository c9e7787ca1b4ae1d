"""Face detection, landmarks and FFHQ-style alignment on real photos."""

import math

import cv2
import numpy as np
import pytest

from deocc_jax.faces import FaceAnalyzer, align, largest_face
from deocc_jax.faces import landmarks as L

PHOTOS = ("0.jpg", "10.jpg", "100.jpg", "105.jpg", "109.jpg", "11.jpg")


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer(num_faces=2) as fa:
        yield fa


@pytest.fixture(scope="module")
def photos(faces_dir):
    return [_read(faces_dir / p) for p in PHOTOS]


def test_detect_returns_pixel_landmarks(analyzer, photos):
    for img in photos:
        faces = analyzer.detect(img)
        assert len(faces) >= 1
        f = largest_face(faces)
        assert f.landmarks.shape == (478, 2) and f.landmarks.dtype == np.float32
        h, w = img.shape[:2]
        # Pixel coordinates (not normalised), mostly inside the photo.
        assert f.width > 20 and f.bbox[2] <= w * 1.1 and f.bbox[3] <= h * 1.1
        assert np.allclose(f.bbox, [*f.landmarks.min(0), *f.landmarks.max(0)])


def test_no_face_in_a_texture(analyzer):
    rng = np.random.default_rng(0)
    tex = cv2.resize(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (256, 256))
    assert analyzer.detect(tex) == []


def test_bad_input_is_refused(analyzer):
    with pytest.raises(ValueError, match="uint8"):
        analyzer.detect(np.zeros((64, 64), np.uint8))


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (6, 2))
    a, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    R = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    M = align.umeyama_similarity(src, src @ R.T + t)
    np.testing.assert_allclose(M, np.concatenate([R, t[:, None]], 1), atol=1e-9)


def test_alignment_puts_eyes_and_mouth_on_the_template(analyzer, photos):
    res = 256
    for img in photos:
        f = largest_face(analyzer.detect(img))
        M = align.alignment_matrix(f.landmarks, res)
        pts = align.transform_landmarks(L.five_points(f.landmarks), M)
        err = np.linalg.norm(pts - align.TEMPLATE_5 * res, axis=1)
        assert err[:2].max() < 0.04 * res, err  # eyes
        crop = align.warp_to_crop(img, M, res)
        assert crop.shape == (res, res, 3) and crop.dtype == np.uint8


def test_a_stretched_face_is_squeezed_back_and_a_real_one_left_alone(analyzer, photos):
    """A picture stretched 1.6x wide reaches the model no wider than a real face."""
    res = 256
    img = photos[1]  # 10.jpg: the portrait of the video that showed the harm
    real = largest_face(analyzer.detect(img)).landmarks
    assert align.face_aspect(real) <= align.MAX_FACE_ASPECT
    np.testing.assert_array_equal(  # real faces: the plain similarity, bit for bit
        align.alignment_matrix(real, res),
        align.umeyama_similarity(L.five_points(real), align.TEMPLATE_5 * res))
    h, w = img.shape[:2]
    wide = cv2.resize(img, (round(w * 1.6), h), interpolation=cv2.INTER_CUBIC)
    stretched = largest_face(analyzer.detect(wide)).landmarks
    assert align.face_aspect(stretched) > 1.2
    M = align.alignment_matrix(stretched, res)
    assert align.face_aspect(align.transform_landmarks(stretched, M)) == pytest.approx(
        align.MAX_FACE_ASPECT, abs=0.01)
    # The crop of the stretched picture looks like the real face's crop, and more so than
    # the similarity alone would make it.
    ref = align.warp_to_crop(img, align.alignment_matrix(real, res), res).astype(float)
    similarity = align.umeyama_similarity(L.five_points(stretched), align.TEMPLATE_5 * res)
    squeezed_err = np.abs(align.warp_to_crop(wide, M, res) - ref).mean()
    similarity_err = np.abs(align.warp_to_crop(wide, similarity, res) - ref).mean()
    assert squeezed_err < 0.7 * similarity_err, (squeezed_err, similarity_err)
    back = align.transform_landmarks(align.transform_landmarks(stretched, M),
                                     align.inverse_matrix(M))  # pasted back where it was
    np.testing.assert_allclose(back, stretched, atol=1e-2)


def test_aligned_crop_maps_to_itself(analyzer, photos):
    """An already aligned face (our own crop, like FFHQ) keeps its framing."""
    res = 256
    for img in photos:
        f = largest_face(analyzer.detect(img))
        crop = align.warp_to_crop(img, align.alignment_matrix(f.landmarks, res), res)
        M2 = align.alignment_matrix(largest_face(analyzer.detect(crop)).landmarks, res)
        assert abs(align.matrix_scale(M2) - 1) < 0.03, M2
        assert abs(math.degrees(math.atan2(M2[1, 0], M2[0, 0]))) < 1.5, M2
        assert np.abs(M2[:, 2]).max() < 0.03 * res, M2


def test_warp_back_round_trip(analyzer, photos):
    img = photos[2]
    f = largest_face(analyzer.detect(img))
    res = 256
    M = align.alignment_matrix(f.landmarks, res)
    crop = align.warp_to_crop(img, M, res)
    back = align.warp_back(crop, M, img.shape[:2])
    cover = align.warp_back(np.full((res, res), 255, np.uint8), M, img.shape[:2])
    inner = cv2.erode(cover, np.ones((5, 5), np.uint8)) == 255
    assert inner.sum() > 1000
    diff = np.abs(back.astype(int) - img.astype(int))[inner]
    assert diff.mean() < 6, diff.mean()
    # Landmarks: crop -> image with the inverse matrix.
    lm_crop = align.transform_landmarks(f.landmarks, M)
    np.testing.assert_allclose(align.transform_landmarks(lm_crop, align.inverse_matrix(M)),
                               f.landmarks, atol=1e-3)


def test_video_mode_tracks_frames(photos):
    img = photos[0]
    with FaceAnalyzer(mode="video") as fa:
        for t in range(3):
            faces = fa.detect_video(img, timestamp_ms=t * 33)
            assert len(faces) == 1 and faces[0].landmarks.shape == (478, 2)
        with pytest.raises(RuntimeError, match="mode='image'"):
            fa.detect(img)


# --- FFHQ-style padding ---------------------------------------------------------

def _tight(img, face, margin=0.0):
    """The photo cropped to the face's landmark box (UTKFace-like, or tighter)."""
    x0, y0, x1, y1 = face.bbox
    w, h = x1 - x0, y1 - y0
    box = np.round([x0 - margin * w, y0 - margin * h, x1 + margin * w, y1 + margin * h]).astype(int)
    box = np.clip(box, 0, [img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    return img[box[1]:box[3], box[0]:box[2]].copy(), box


def test_padding_fraction_measures_the_crop_outside_the_photo():
    img = np.zeros((100, 100, 3), np.uint8)
    M = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])  # the photo fills the crop's top-left quarter
    assert abs(align.padding_fraction(M, img.shape[:2], 100) - 0.75) < 0.02
    assert align.padding_fraction(np.array([[1.0, 0, 0], [0, 1.0, 0]]), img.shape[:2], 100) == 0.0
    crop = align.padded_crop(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 100)
    assert crop.padding_fraction == 0.0


def test_padded_crop_fills_like_ffhq_not_like_a_mirror(analyzer, photos):
    res = 128
    img = photos[2]
    face = largest_face(analyzer.detect(img))
    tight, _ = _tight(img, face, 0.05)
    f2 = largest_face(analyzer.detect(tight))
    M = align.alignment_matrix(f2.landmarks, res)
    plain = align.warp_to_crop(tight, M, res)                       # the old reflection
    padded = align.padded_crop(tight, M, res)
    outside = align.outside_photo(M, tight.shape[:2], res)
    assert 0.3 < padded.padding_fraction == outside.mean() < 0.8
    # Deep inside the photo nothing changes.
    inner = cv2.erode((~outside).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    assert inner.sum() > 500
    np.testing.assert_array_equal(padded.image[inner], plain[inner])
    # Far outside, the fill fades to flat (the photo's median), not a mirrored face.
    far = cv2.erode(outside.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    assert far.sum() > 200
    median = np.median(tight.reshape(-1, 3), axis=0)
    off = lambda x: np.abs(x[far].astype(float) - median).mean()  # noqa: E731
    assert off(padded.image) < 0.6 * off(plain)
    assert padded.image[far].std(0).mean() < 0.5 * plain[far].std(0).mean()
    # Near the photo's edge the fill is blurred: far less detail than the reflection.
    ring = outside & ~far
    lap = lambda x: np.abs(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F))  # noqa: E731
    assert lap(padded.image)[ring].mean() < 0.5 * lap(plain)[ring].mean()


# --- head pose --------------------------------------------------------------------

def test_canonical_face_comes_from_the_model_bundle():
    face = L.canonical_face()
    assert face.vertices.shape == (L.NUM_MESH_POINTS, 3) and (face.weights > 0).sum() == 33
    # Camera axes: the chin is below the nose, the nose tip nearest the camera.
    assert face.vertices[L.CHIN, 1] > face.vertices[L.NOSE_TIP, 1]
    assert face.vertices[:, 2].argmin() in (L.NOSE_TIP, 4)  # 4: just above the tip
    assert face.vertices[L.LEFT_EYE_CORNERS[0], 0] < 0 < face.vertices[L.RIGHT_EYE_CORNERS[0], 0]


@pytest.mark.parametrize("angle", [-30, 30])
def test_head_pose_follows_a_rotated_photo(analyzer, photos, angle):
    face = L.canonical_face()
    for img in photos[:3]:
        p0 = L.head_pose(largest_face(analyzer.detect(img)).landmarks, face)
        h, w = img.shape[:2]
        R = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rotated = cv2.warpAffine(img, R, (w, h), borderMode=cv2.BORDER_REPLICATE)
        p1 = L.head_pose(largest_face(analyzer.detect(rotated)).landmarks, face)
        # cv2's positive angle turns the photo counter-clockwise: roll goes down by it.
        assert abs((p1.roll - p0.roll) + angle) < 6, (p0.roll, p1.roll)
        assert abs(p1.yaw - p0.yaw) < 8 and abs(p1.pitch - p0.pitch) < 8
        assert p1.error < 0.15
