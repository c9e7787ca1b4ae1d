r"""Face finding: recall on real masked photos, false faces on photos with none, and cost.

The library of `python -m benchmarks.detection --output=benchmarks/results/detection.json`
(benchmarks/detection.py, its flags).

- recall: share of the photos of --masked (../shared/data/real_masked, 199 real
  photos of people in masks) and of --faces (../shared/data/faces) in which a
  face is found: before (the MediaPipe landmarker alone, as deocc was) and
  after, per stage of `FaceAnalyzer` (landmarker faces confirmed by the
  full-range detector; faces the full-range stage added), and why the others
  yielded none; also the faces found in all (up to 8 a photo), and those found
  when every photo is searched down to min_face_px (`face_scale_span` inf);
- precision: faces found on photos with no face: scikit-image's sample images
  that show no person, each also rotated 90 degrees and enlarged 2x, and
  generated noise, gradients and checkerboards (target 0);
- cost: `FaceAnalyzer.find` ms per 640x480 frame and per 12 MP photo (a face
  photo pasted into a 4000x3000 scene) and per 640x480 portrait (the face photo
  scaled to a 200 px face), IMAGE mode, with up to 8 faces as
  infer and the service search; the same frame searched down to min_face_px
  beside its face (`face_scale_span` inf, the tiles' cost); and the VIDEO-mode
  mean per frame with the full-range pass every `FULL_RANGE_EVERY` frames.
  The machine may be shared: compare times within one run (ratios);
- live: the live pipeline (`streaming`, the shipped model, detection as
  shipped) on a 640x480 30 fps clip of one masked face: frames/s paced in real
  time, and unpaced (the rate its stages sustain);
- the `min_face_px` sweep: --sweep_photos face photos shrunk to a given face
  size and pasted into a 1280x960 scene: the share found, and the landmark
  error of those found (mean over the 5 alignment points, in eye distances,
  against the landmarker's on the full-size photo).
"""

from __future__ import annotations

import glob
import os
import statistics
import time
from typing import Any, Callable

import cv2
import numpy as np

from deocc_jax.faces import FaceAnalyzer, detect
from deocc_jax.faces import landmarks as lmk
from deocc_jax.io import images

# scikit-image samples that show no human face (astronaut, camera and lfw_subset do).
SKIMAGE_NO_FACE = ("binary_blobs", "brick", "cat", "cell", "checkerboard", "chelsea", "clock",
                   "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
                   "rocket", "shepp_logan_phantom", "text")
SWEEP_SIZES = (12, 16, 20, 24, 32, 48)
# The face in the cost's 640x480 portrait (a selfie's scale), landmark box side in px.
PORTRAIT_FACE_PX = 200


def _as_rgb(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype != np.uint8:
        x = np.clip(x * 255.0, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def generated_no_face(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Textures and scenes made here: noise, gradients, checkerboards, stripes."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    board = (((yy // 40) + (xx // 40)) % 2 * 255).astype(np.uint8)
    out = [("noise", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
           ("smooth_noise", cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                                             (0, 0), 6)),
           ("gradient", np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255],
                                 -1).astype(np.uint8)),
           ("checkerboard", np.repeat(board[..., None], 3, -1)),
           ("stripes", np.repeat(((np.sin(xx / 7.0 + yy / 13.0) + 1) * 127.5).astype(np.uint8)[
               ..., None], 3, -1))]
    centre = (w / 2, h / 2)
    out.append(("checkerboard_rot30", cv2.warpAffine(out[3][1], cv2.getRotationMatrix2D(centre, 30, 1.5),
                                                     (w, h), borderMode=cv2.BORDER_REFLECT)))
    return out


def no_face_images() -> list[tuple[str, np.ndarray]]:
    """Photos with no face: scikit-image's (if installed) with rotated enlargements, and generated."""
    out = []
    try:
        import skimage.data as skdata
    except ImportError:
        skdata = None
    if skdata is not None:
        for name in SKIMAGE_NO_FACE:
            x = _as_rgb(getattr(skdata, name)())
            out.append((name, x))
            out.append((name + "_rot90_2x",
                        np.ascontiguousarray(cv2.resize(np.rot90(x), None, fx=2, fy=2))))
    return out + generated_no_face()


def _photos(folder: str, limit: int = 0) -> list[str]:
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*")) if os.path.isfile(p))
    return paths[:limit] if limit else paths


def _read(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return images.decode_image(f.read())


def recall(paths: list[str], before: FaceAnalyzer, after: FaceAnalyzer,
           read: Callable[[str], np.ndarray] = _read, full_search: FaceAnalyzer | None = None
           ) -> dict[str, Any]:
    """Photos with at least one face, before and after, per stage, and the reasons for none.

    With `full_search` (an analyzer searching every photo down to min_face_px),
    also the faces it finds in all: what `after`'s cheaper search misses.
    """
    counts = {"landmarker_alone": 0, "after": 0, "after_landmarker_stage": 0,
              "after_full_range_stage_only": 0, "faces_landmarker_alone": 0, "faces_after": 0}
    reasons: dict[str, int] = {}
    for p in paths:
        image = read(p)
        alone = before.detect(image)
        counts["landmarker_alone"] += bool(alone)
        counts["faces_landmarker_alone"] += len(alone)
        search = after.find(image)
        counts["faces_after"] += len(search.faces)
        if full_search is not None:
            counts["faces_full_search"] = counts.get("faces_full_search", 0) + len(
                full_search.detect(image))
        sources = {f.source for f in search.faces}
        counts["after"] += bool(search.faces)
        counts["after_landmarker_stage"] += detect.LANDMARKER in sources
        counts["after_full_range_stage_only"] += sources == {detect.FULL_RANGE}
        if search.reason:
            reasons[search.reason] = reasons.get(search.reason, 0) + 1
    n = len(paths)
    return {"photos": n, **counts, "share_landmarker_alone": counts["landmarker_alone"] / max(n, 1),
            "share_after": counts["after"] / max(n, 1), "no_face_reasons": reasons}


def precision(items: list[tuple[str, np.ndarray]], before: FaceAnalyzer, after: FaceAnalyzer
              ) -> dict[str, Any]:
    """Faces found on photos that show none (target 0), before and after."""
    fb = {n: len(before.detect(x)) for n, x in items}
    fa = {n: len(after.detect(x)) for n, x in items}
    return {"photos": len(items), "faces_landmarker_alone": sum(fb.values()),
            "photos_with_false_face_landmarker_alone": sorted(n for n, k in fb.items() if k),
            "faces_after": sum(fa.values()),
            "photos_with_false_face_after": sorted(n for n, k in fa.items() if k)}


def _paste(face_photo: np.ndarray, canvas_hw: tuple[int, int], scale: float, at: tuple[int, int],
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A scene (smooth noise) with the photo scaled by `scale` pasted at `at`; and the 2x3 map."""
    rng = np.random.default_rng(seed)
    h, w = canvas_hw
    scene = cv2.GaussianBlur(rng.integers(40, 200, (h, w, 3), dtype=np.uint8), (0, 0), 8)
    small = cv2.resize(face_photo, None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    sh, sw = small.shape[:2]
    x, y = at
    scene[y:y + sh, x:x + sw] = small[:h - y, :w - x]
    return scene, np.array([[scale, 0, x], [0, scale, y]], np.float64)


def _time_ms(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000.0)
    return {"p50": statistics.median(t), "min": min(t), "max": max(t)}


def cost(face_photo: np.ndarray, analyzer: FaceAnalyzer, landmarker_alone: FaceAnalyzer,
         video: FaceAnalyzer, full_search: FaceAnalyzer | None = None, repeats: int = 10
         ) -> dict[str, Any]:
    """ms per 640x480 frame and per 12 MP photo with a face (IMAGE mode), and VIDEO mode per frame."""
    s = min(1.0, 300.0 / max(face_photo.shape[:2]))
    frame, _ = _paste(face_photo, (480, 640), s, (170, 90))
    # A portrait: the face photo scaled to a PORTRAIT_FACE_PX face, centred on it.
    ref = detect.largest_face(landmarker_alone.detect(face_photo))
    k = PORTRAIT_FACE_PX / detect.face_size(ref)
    cx, cy = (ref.bbox[:2] + ref.bbox[2:]) / 2 * k
    portrait, _ = _paste(face_photo, (480, 640), k, (max(0, round(320 - cx)), max(0, round(240 - cy))))
    big, _ = _paste(face_photo, (3000, 4000), 1.0, (1800, 1200))
    empty, _ = _paste(face_photo[:1, :1], (480, 640), 1.0, (0, 0))
    out = {"frame_640x480_ms": _time_ms(lambda: analyzer.find(frame), repeats),
           "frame_640x480_no_face_ms": _time_ms(lambda: analyzer.find(empty), repeats),
           "frame_640x480_landmarker_alone_ms": _time_ms(lambda: landmarker_alone.detect(frame),
                                                         repeats),
           "frame_640x480_face_px": round(max(detect.face_size(f) for f in analyzer.detect(frame))),
           "portrait_640x480_ms": _time_ms(lambda: analyzer.find(portrait), repeats),
           "portrait_640x480_landmarker_alone_ms": _time_ms(lambda: landmarker_alone.detect(portrait),
                                                            repeats),
           "portrait_640x480_face_px": round(max(detect.face_size(f)
                                                 for f in analyzer.detect(portrait))),
           "photo_12mp_ms": _time_ms(lambda: analyzer.find(big), max(2, repeats // 3)),
           "photo_12mp_landmarker_alone_ms": _time_ms(lambda: landmarker_alone.detect(big),
                                                      max(2, repeats // 3))}
    if full_search is not None:
        # The same photo searched down to min_face_px beside its face (tiles as before).
        out["frame_640x480_full_search_ms"] = _time_ms(lambda: full_search.find(frame), repeats)
        out["portrait_640x480_full_search_ms"] = _time_ms(lambda: full_search.find(portrait), repeats)
    ts_ms = 0  # VIDEO mode needs increasing timestamps across both clips
    for name, img in (("video_640x480_face", frame), ("video_640x480_no_face", empty)):
        t0 = time.perf_counter()
        n = 50
        for _ in range(n):
            ts_ms += 40
            video.find_video(img, ts_ms)
        out[name + "_mean_ms"] = (time.perf_counter() - t0) * 1000.0 / n
    out["video_full_range_every"] = video.full_range_every
    return out


def min_face_sweep(paths: list[str], analyzer: FaceAnalyzer, reference: FaceAnalyzer,
                   sizes: tuple[int, ...] = SWEEP_SIZES) -> list[dict[str, Any]]:
    """Found share and landmark error (eye distances) of faces shrunk to each size."""
    refs = []
    for p in paths:
        image = _read(p)
        face = detect.largest_face(reference.detect(image))
        if face is not None:
            refs.append((image, face))
    rows = []
    for size in sizes:
        found, errs = 0, []
        for i, (image, face) in enumerate(refs):
            scale = size / max(face.width, face.height)
            scene, M = _paste(image, (960, 1280), scale, (400 + 37 * (i % 7), 300 + 29 * (i % 5)), i)
            truth = lmk.five_points(face.landmarks) @ M[:, :2].T + M[:, 2]
            got = [f for f in analyzer.detect(scene)
                   if np.linalg.norm(lmk.five_points(f.landmarks)[2] - truth[2]) < size]
            if got:
                found += 1
                eye = np.linalg.norm(truth[1] - truth[0])
                errs.append(float(np.linalg.norm(lmk.five_points(got[0].landmarks) - truth,
                                                 axis=1).mean() / eye))
        rows.append({"face_px": size, "faces": len(refs), "found": found,
                     "landmark_error_eye_distances_median": statistics.median(errs) if errs else None})
    return rows


def live_fps(photo: str, scratch: str = "/tmp/deocc_bench/detection") -> dict[str, Any]:
    """The live pipeline with the shipped model on a 640x480, 30 fps, 150-frame clip of `photo`."""
    from benchmarks import inference_lib
    from deocc_jax.artifacts import predictors
    from deocc_jax.streaming import clips
    from deocc_jax.streaming.tracking import TrackerOptions

    os.makedirs(scratch, exist_ok=True)
    clip_path = os.path.join(scratch, "live_640x480_30fps_150.mp4")
    if not os.path.exists(clip_path):
        clips.write_clip(clips.make_clip(photo, frames=150, size=(640, 480), fps=30.0), clip_path)
    model = predictors.open_predictor(os.path.join(predictors.PRETRAINED_DIR, "deocc-realtime-128"))
    quiet = lambda s: None  # noqa: E731
    paced = inference_lib.measure_live(model, clip_path, TrackerOptions(), quiet)
    capacity = inference_lib.measure_live_capacity(model, clip_path, TrackerOptions(), quiet)
    keep = ("fps_out", "frames_in", "frames_out", "dropped", "faces", "latency_ms_p95", "stage_ms")
    return {"clip": clip_path, "paced_30fps": {k: paced.get(k) for k in keep},
            "unpaced": {k: capacity.get(k) for k in keep}}


def run(masked_dir: str, faces_dir: str, *, max_faces_photos: int = 0, sweep_photos: int = 20,
        live: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; returns the JSON record's results."""
    load_before = os.getloadavg()[0]
    with FaceAnalyzer(num_faces=8, full_range=False) as before, \
            FaceAnalyzer(num_faces=8) as after, \
            FaceAnalyzer(num_faces=8, min_face_px=SWEEP_SIZES[0] * 0.75) as after_any_size, \
            FaceAnalyzer(mode="video", num_faces=4) as video, \
            FaceAnalyzer(num_faces=8, face_scale_span=float("inf")) as full_search:
        log("precision on photos with no face")
        prec = precision(no_face_images(), before, after)
        log(f"  {prec}")
        log("recall on real masked photos")
        rec_masked = recall(_photos(masked_dir), before, after, full_search=full_search)
        log(f"  {rec_masked}")
        faces_paths = _photos(faces_dir, max_faces_photos)
        log(f"recall on {len(faces_paths)} photos of {faces_dir}")
        rec_faces = recall(faces_paths, before, after, full_search=full_search)
        log(f"  {rec_faces}")
        log("min_face_px sweep")
        sweep = min_face_sweep(_photos(faces_dir)[:sweep_photos], after_any_size, before)
        log(f"  {sweep}")
        log("cost")
        timing = cost(_read(_photos(faces_dir)[0]), after, before, video, full_search)
        log(f"  {timing}")
    live_rec = None
    if live:
        log("live pipeline")
        live_rec = live_fps(_photos(faces_dir)[0])
        log(f"  {live_rec}")
    return {"live": live_rec, "precision_no_face": prec, "recall_real_masked": rec_masked,
            "recall_faces": {**rec_faces, "sample": bool(max_faces_photos)},
            "min_face_px_sweep": sweep, "cost": timing,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
