"""The full-range BlazeFace (decoding, real model) and the two-stage face finding built on it."""

import os

import cv2
import numpy as np
import pytest

from deocc_jax.faces import FaceAnalyzer, align, blazeface, cascade, detect, largest_face
from deocc_jax.faces import landmarks as L


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# --- decoding, on hand-made model outputs (no model) ---------------------------------------

def test_anchors_are_the_48x48_grid_centres():
    a = blazeface.anchors()
    assert a.shape == (2304, 2)
    np.testing.assert_allclose(a[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(a[1], [1.5 / 48, 0.5 / 48])      # x runs fastest
    np.testing.assert_allclose(a[48], [0.5 / 48, 1.5 / 48])
    np.testing.assert_allclose(a[-1], [47.5 / 48, 47.5 / 48])


def test_decoding_matches_hand_computed_values():
    reg = np.zeros((1, 2304, 16), np.float32)
    k = 1 * 48 + 2                                  # anchor (x=2, y=1): centre (2.5/48, 1.5/48)
    reg[0, k, :4] = [9.6, -19.2, 38.4, 19.2]        # centre += (0.05, -0.1); size (0.2, 0.1)
    reg[0, k, 4:6] = [19.2, 0.0]                    # right eye: anchor + (0.1, 0)
    reg[0, k, 14:16] = [-9.6, 96.0]                 # left ear: anchor + (-0.05, 0.5)
    boxes, kps = blazeface.decode_boxes(reg)
    cx, cy = 2.5 / 48 + 0.05, 1.5 / 48 - 0.1
    np.testing.assert_allclose(boxes[k], [cx - 0.1, cy - 0.05, cx + 0.1, cy + 0.05], atol=1e-6)
    np.testing.assert_allclose(kps[k, 0], [2.5 / 48 + 0.1, 1.5 / 48], atol=1e-6)
    np.testing.assert_allclose(kps[k, 5], [2.5 / 48 - 0.05, 1.5 / 48 + 0.5], atol=1e-6)
    # A zero regressor is a zero-size box on its anchor, keypoints on it too.
    np.testing.assert_allclose(boxes[0], [0.5 / 48, 0.5 / 48] * 2, atol=1e-7)
    np.testing.assert_allclose(kps[0], np.full((6, 2), 0.5 / 48), atol=1e-7)


def test_scores_are_clipped_sigmoids():
    np.testing.assert_allclose(blazeface.sigmoid_scores([0.0, np.log(3.0), 500.0, -500.0]),
                               [0.5, 0.75, 1.0, 0.0], atol=1e-6)


def test_weighted_nms_averages_overlaps_by_score():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5.0, 5.0, 6.0, 6.0]])
    kps = np.stack([np.full((6, 2), v) for v in (0.0, 1.0, 9.0)])
    out = blazeface.weighted_nms(boxes, kps, np.array([0.3, 0.9, 0.8]))
    assert len(out) == 2
    box, kp, score = out[0]
    assert score == pytest.approx(0.9)               # the best one's score
    np.testing.assert_allclose(box, (0.3 * boxes[0] + 0.9 * boxes[1]) / 1.2, atol=1e-6)
    np.testing.assert_allclose(kp, np.full((6, 2), 0.9 / 1.2), atol=1e-6)
    np.testing.assert_allclose(out[1][0], boxes[2])  # IoU 0 < 0.3: kept apart
    # Just under the IoU threshold: not merged.
    far = np.array([[0.0, 0.0, 1.0, 1.0], [0.6, 0.0, 1.6, 1.0]])   # IoU 0.4 / 1.6 = 0.25
    assert len(blazeface.weighted_nms(far, kps[:2], np.array([0.5, 0.6]))) == 2


def test_letterbox_maps_back_to_image_pixels():
    img = np.full((100, 200, 3), 255, np.uint8)                    # wide: bars above and below
    x, lb = blazeface.letterbox(img)
    assert x.shape == (192, 192, 3) and x.min() == -1.0 and x.max() == 1.0
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.96, 0.0, 48.0)
    np.testing.assert_allclose(lb.to_image([[0.5, 0.5], [0.0, 0.25]]), [[100, 50], [0, 0]],
                               atol=1e-4)


def test_tiles_cover_the_image_with_overlap():
    t = blazeface.tiles(4000, 3000, 1024)
    assert t[0][:2] == (0, 0) and max(x1 for *_, x1, _ in t) == 4000 and max(r[3] for r in t) == 3000
    xs = sorted({r[0] for r in t})
    assert all(b - a <= 1024 * 0.75 + 1 for a, b in zip(xs, xs[1:]))


# --- the real models ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector():
    with blazeface.FullRangeDetector() as d:
        yield d


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer(num_faces=4) as fa:
        yield fa


@pytest.fixture(scope="module")
def landmarker_alone():
    with FaceAnalyzer(num_faces=4, full_range=False) as fa:
        yield fa


@pytest.fixture(scope="module")
def portrait(faces_dir):
    return _read(faces_dir / "1.jpg")


def test_full_range_model_finds_a_face_with_its_eyes(detector, landmarker_alone, portrait):
    dets = detector.detect(portrait)
    assert len(dets) == 1 and dets[0].score > 0.6
    face = landmarker_alone.detect(portrait)[0]
    d = dets[0]
    left, right = L.eye_centres(face.landmarks)                 # image-left eye first
    eye = np.linalg.norm(right - left)
    # The subject's right eye (keypoint 0) is the image-left one.
    assert np.linalg.norm(d.keypoints[blazeface.RIGHT_EYE] - left) < 0.25 * eye
    assert np.linalg.norm(d.keypoints[blazeface.LEFT_EYE] - right) < 0.25 * eye
    assert d.box[0] < face.landmarks[L.NOSE_TIP][0] < d.box[2]
    assert d.box[1] < face.landmarks[L.NOSE_TIP][1] < d.box[3]


def _scene(face_img, hw, scale, at, seed=0):
    rng = np.random.default_rng(seed)
    scene = cv2.GaussianBlur(rng.integers(40, 200, hw + (3,), dtype=np.uint8), (0, 0), 8)
    small = cv2.resize(face_img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    scene[at[1]:at[1] + small.shape[0], at[0]:at[0] + small.shape[1]] = small
    return scene


def test_a_small_face_in_a_large_photo_is_found(analyzer, landmarker_alone, portrait):
    ref = landmarker_alone.detect(portrait)[0]
    scale = 40.0 / ref.width                                    # a 40 px face in 2400 x 1800
    scene = _scene(portrait, (1800, 2400), scale, (1500, 1100))
    assert landmarker_alone.detect(scene) == []                 # beyond the short-range reach
    search = analyzer.find(scene)
    assert len(search.faces) == 1 and search.faces[0].source == detect.FULL_RANGE
    truth = L.five_points(ref.landmarks) * scale + [1500, 1100]
    got = L.five_points(search.faces[0].landmarks)
    eye = np.linalg.norm(truth[1] - truth[0])
    assert np.linalg.norm(got - truth, axis=1).max() < 0.25 * eye


@pytest.mark.parametrize("angle", [70, 90])
def test_a_rotated_face_is_found_and_aligned_upright(analyzer, landmarker_alone, faces_dir, angle):
    photo = _read(faces_dir / "0.jpg")
    h, w = photo.shape[:2]
    big = cv2.copyMakeBorder(photo, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT)
    R = cv2.getRotationMatrix2D((big.shape[1] / 2, big.shape[0] / 2), angle, 1.0)  # CCW
    turned = cv2.warpAffine(big, R, (big.shape[1], big.shape[0]))
    assert landmarker_alone.detect(turned) == []
    face = largest_face(analyzer.detect(turned))
    assert face is not None and face.source == detect.FULL_RANGE
    M = align.alignment_matrix(face.landmarks, 128)
    pts = align.transform_landmarks(L.five_points(face.landmarks), M)
    # On the aligned crop the eyes are level, image-left eye on the left, the mouth below them.
    np.testing.assert_allclose(pts, align.TEMPLATE_5 * 128, atol=6)
    assert pts[0, 0] < pts[1, 0] and pts[3:, 1].min() > pts[:2, 1].max()


def test_photos_without_a_face_yield_none(analyzer, landmarker_alone):
    import skimage.data
    clock = np.repeat(skimage.data.clock()[..., None], 3, -1)
    assert landmarker_alone.detect(clock) != []                 # the landmarker alone is fooled
    search = analyzer.find(clock)
    assert search.faces == [] and search.reason == cascade.REJECTED
    rng = np.random.default_rng(0)
    noise = cv2.resize(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (640, 480))
    search = analyzer.find(noise)
    assert search.faces == [] and search.reason in (cascade.NONE_DETECTED, cascade.REJECTED)


def test_faces_below_min_face_px_are_reported_not_returned(landmarker_alone, portrait):
    ref = landmarker_alone.detect(portrait)[0]
    scene = _scene(portrait, (900, 1200), 60.0 / ref.width, (500, 400))
    with FaceAnalyzer(num_faces=2, min_face_px=200) as fa:
        search = fa.find(scene)
    assert search.faces == [] and len(search.too_small) == 1
    assert search.reason == cascade.TOO_SMALL


def test_video_mode_keeps_a_full_range_face(portrait, landmarker_alone):
    ref = landmarker_alone.detect(portrait)[0]
    scene = _scene(portrait, (480, 640), 36.0 / ref.width, (300, 200))
    with FaceAnalyzer(mode="video", num_faces=2, full_range_every=5) as fa:
        counts = [len(fa.detect_video(scene, t * 40)) for t in range(7)]
    assert counts == [1] * 7     # found on frame 0, then tracked between full-range passes


def _counting_passes(detector, monkeypatch) -> list:
    """Records the input shape of every full-range pass `detector` makes."""
    calls, raw = [], detector.raw
    monkeypatch.setattr(detector, "raw",
                        lambda img, *a: (calls.append(img.shape[:2]), raw(img, *a))[1])
    return calls


def test_a_confirmed_face_costs_one_whole_photo_pass_not_the_tiles(
        analyzer, landmarker_alone, portrait, monkeypatch):
    ref = landmarker_alone.detect(portrait)[0]
    scene = _scene(portrait, (480, 640), 200.0 / ref.width, (150, 60))   # a 200 px face
    passes = _counting_passes(analyzer._detector, monkeypatch)
    search = analyzer.find(scene)
    assert len(search.faces) == 1 and search.faces[0].source == detect.LANDMARKER
    # The whole photo, at most one upright check; no tiles (nine at 640x480 for 16 px faces).
    assert passes[0] == (480, 640) and len(passes) <= 2, passes


def test_whole_pass_reuse_and_a_larger_smallest_face_drop_tiles(detector, portrait):
    scene = _scene(portrait, (960, 1280), 0.5, (300, 200))
    whole = detector.whole_pass(scene)
    full = detector.detect(scene)
    again = detector.detect(scene, whole=whole)
    assert [d.score for d in again] == [d.score for d in full]
    # Faces from 80 px are seen whole at 1280 px (12 px of the 192 px input): no tiles needed.
    assert blazeface.tile_sides(1280, 960, 80) == [] and blazeface.tile_sides(1280, 960, 16)
    coarse = detector.detect(scene, min_face_px=80, whole=whole)
    assert [d.score for d in coarse] == [d.score for d in blazeface.merge([whole])]


def test_search_min_face_px_follows_the_smallest_face_found():
    face = lambda side: detect._face(np.array([[0, 0], [side, side * 0.8]], np.float32))  # noqa: E731
    assert detect.search_min_face_px([], 16) == 16
    assert detect.search_min_face_px([face(400), face(200)], 16) == 200 / detect.FACE_SCALE_SPAN
    assert detect.search_min_face_px([face(40)], 16) == 16       # never below min_face_px
    assert detect.search_min_face_px([face(400)], 16, span=float("inf")) == 16
    with pytest.raises(ValueError, match="face_scale_span"):
        FaceAnalyzer(face_scale_span=0.5)


def test_a_face_a_few_times_smaller_than_a_landmarked_one_is_still_found(
        analyzer, landmarker_alone, portrait):
    ref = landmarker_alone.detect(portrait)[0]
    scene = _scene(portrait, (960, 1280), 200.0 / ref.width, (60, 60))       # found by the landmarker
    small = cv2.resize(portrait, None, fx=74.0 / ref.width, fy=74.0 / ref.width,
                       interpolation=cv2.INTER_AREA)  # 74 px: below the 80 px the whole-photo pass sees
    scene[-40 - small.shape[0]:-40, -40 - small.shape[1]:-40] = small
    faces = analyzer.find(scene).faces
    assert [f.source for f in faces] == [detect.LANDMARKER, detect.FULL_RANGE]
    assert detect.search_min_face_px(faces[:1], 16) < detect.face_size(faces[1]) < 80


def test_landmarks_of_a_flipped_photo_unmirror_onto_the_photos(landmarker_alone, portrait):
    order = L.mirror_order()
    assert sorted(order) == list(range(478)) and (order[order] == np.arange(478)).all()
    assert order[33] == 263 and order[L.NOSE_TIP] == L.NOSE_TIP and order[468] == 473
    face = landmarker_alone.detect(portrait)[0]
    flipped = landmarker_alone.detect(np.ascontiguousarray(portrait[:, ::-1]))[0]
    back = L.unmirror(flipped.landmarks, portrait.shape[1])
    assert np.abs(back - face.landmarks).mean() < 0.01 * face.width


def test_a_turned_masked_face_is_found_through_its_mirror_image(analyzer, shared_dir):
    # A head turned to the image's left above a mask: the landmark model says
    # "no face" (presence 0.05) on it, and 0.99 on its mirror image.
    photo = _read(shared_dir / "data" / "real_masked" / "with_mask286.jpg")
    search = analyzer.find(photo)
    assert [f.source for f in search.faces] == [detect.FULL_RANGE]
    mirrored = analyzer.find(np.ascontiguousarray(photo[:, ::-1])).faces
    assert len(mirrored) == 1
    back = L.unmirror(mirrored[0].landmarks, photo.shape[1])
    assert np.abs(back - search.faces[0].landmarks).mean() < 0.02 * search.faces[0].width


def test_a_face_that_fills_the_photo_is_found_in_a_padded_canvas(analyzer, landmarker_alone,
                                                                  detector, shared_dir):
    # A UTKFace chip (a halftone print): the face fills the photo, beyond the
    # full-range detector's whole-photo pass, and the landmarker's own mesh lies
    # on the mouth and chin, so the detector does not confirm it. Given a border,
    # the landmarker finds the face itself: the truth here.
    photo = _read(shared_dir / "data" / "utkface" / "36_1_0_20170116222807886.jpg.chip.jpg")
    border = cv2.copyMakeBorder(photo, 50, 50, 50, 50, cv2.BORDER_CONSTANT)
    truth = L.five_points(landmarker_alone.detect(border)[0].landmarks) - 50
    eye = np.linalg.norm(truth[1] - truth[0])
    off_face = L.five_points(landmarker_alone.detect(photo)[0].landmarks)
    assert np.linalg.norm(off_face - truth, axis=1).max() > 0.5 * eye
    assert detector.detect(photo) == []
    search = analyzer.find(photo)
    assert [f.source for f in search.faces] == [detect.FULL_RANGE]
    got = L.five_points(search.faces[0].landmarks)
    assert np.linalg.norm(got - truth, axis=1).max() < 0.25 * eye


def test_the_padded_canvas_counts_only_faces_that_fill_the_photo(analyzer):
    import skimage.data

    # From the padded canvas, the colour wheel turned and enlarged passes every
    # face check with a box 0.8 of the photo's side: it is no tight face.
    wheel = np.ascontiguousarray(cv2.resize(np.rot90(skimage.data.colorwheel()), None, fx=2, fy=2))
    assert analyzer.find(wheel).faces == []


# --- what infer says per photo ------------------------------------------------------------

def test_infer_names_why_a_photo_has_no_face(tmp_path, portrait, landmarker_alone):
    import skimage.data

    from deocc_jax.artifacts import predictors
    from deocc_jax.restoration import infer_lib

    model = predictors.open_predictor(os.path.join(predictors.PRETRAINED_DIR, "deocc-realtime-128"))
    ref = landmarker_alone.detect(portrait)[0]
    src = tmp_path / "in"
    src.mkdir()
    small = _scene(portrait, (900, 1200), 50.0 / ref.width, (700, 500))
    cv2.imwrite(str(src / "small.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "clock.png"), skimage.data.clock())
    lines = []
    reports = infer_lib.process_photos(model, str(src), str(tmp_path / "out"), quiet=True,
                                       log=lines.append)
    status = {r["input"].split("/")[-1]: (r["status"], r.get("no_face_reason")) for r in reports}
    assert status == {"small.png": ("restored", None), "clock.png": ("no_face", cascade.REJECTED)}
    assert any("clock.png: no face found; copied unchanged" in s and cascade.REJECTED in s
               for s in lines)
    assert "2 photo(s): 1 restored, 1 without a face (copied; 1 " + cascade.REJECTED + "); " \
           "1 face(s) restored" in lines[-1]

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    cv2.imwrite(str(tiny / "far.png"), cv2.cvtColor(
        _scene(portrait, (480, 640), 60.0 / ref.width, (300, 200)), cv2.COLOR_RGB2BGR))
    lines = []
    reports = infer_lib.process_photos(model, str(tiny), str(tmp_path / "out2"), quiet=True,
                                       min_face_px=200, log=lines.append)
    assert reports[0]["no_face_reason"] == cascade.TOO_SMALL and reports[0]["faces_too_small"] == 1
    assert "below --min_face_px=200" in lines[0]


def test_full_range_faces_get_mediapipes_blendshapes(faces_dir):
    from deocc_jax.faces import mesh

    photo = _read(faces_dir / "10.jpg")
    with FaceAnalyzer(num_faces=1, blendshapes=True, full_range=False) as fa:
        face = fa.detect(photo)[0]
    m = mesh.FaceMesh(blendshapes=True)
    np.testing.assert_allclose(m.blendshapes(face.landmarks), face.blendshapes, atol=1e-4)


def test_our_landmark_crop_reproduces_the_landmarker(landmarker_alone, detector, portrait):
    from deocc_jax.faces import mesh

    face = landmarker_alone.detect(portrait)[0]
    d = detector.detect(portrait)[0]
    roi = mesh.roi_from_points(d.box, d.keypoints[blazeface.RIGHT_EYE],
                               d.keypoints[blazeface.LEFT_EYE])
    got = mesh.FaceMesh().run(portrait, roi)
    assert got.presence > 0.9
    err = np.linalg.norm(got.landmarks - face.landmarks, axis=1)
    assert err.mean() < 0.02 * face.width and err.max() < 0.05 * face.width


def test_one_face_returned_twice_by_the_landmarker_is_kept_once():
    lm = np.zeros((478, 2), np.float32)
    lm[:, 0] = np.linspace(100, 200, 478)
    lm[:, 1] = np.linspace(50, 160, 478)
    faces = [detect.Face(landmarks=lm + d, bbox=np.array([100 + d, 50 + d, 200 + d, 160 + d],
                                                         np.float32), blendshapes=None)
             for d in (0.0, 4.0)]
    other = detect.Face(landmarks=lm + 300, bbox=np.array([400, 350, 500, 460], np.float32),
                        blendshapes=None)
    kept = detect.distinct_faces(faces + [other])
    assert [k.bbox[0] for k in kept] == [100, 400]
