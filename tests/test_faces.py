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
