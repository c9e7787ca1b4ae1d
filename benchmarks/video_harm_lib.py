r"""What a model does to faces with nothing over them in video, as a user sees it in a call.

The library of `python -m benchmarks.video_harm` (benchmarks/video_harm.py, its flags).

A clip is made from each photo deterministically: the photo resized to `CANVAS` (800x600, its
aspect not kept, as the clip that first showed the problem was made; `--aspect=keep` keeps it,
`fit_canvas`), and a `WINDOW` (640x480)
panning over it along a smooth path (`pan_offsets`), written as H.264 to a scratch folder. The
clip goes through the video paths deocc ships, unchanged:

  live   `streaming.pipeline.LivePipeline` as `python -m deocc_jax.live` builds it for a file
         processed in full (flow tracking, one-euro smoothing, stabilisation, the harm gate);
         the restored frames are taken from a sink, bit for bit
  infer  `restoration.infer_lib.process_video` as `python -m deocc_jax.infer` runs it on a
         video (MediaPipe video tracking, smoothing, stabilisation, the harm gate); its output
         file is decoded again, so H.264 re-encoding (crf 18) is in the figures: `codec_only`
         is the same measure on the decoded input encoded once more without any model

Per frame, against the decoded input frame (what the pipeline got): the share of face pixels
(MediaPipe's face oval from landmarks found on the input frame, `data_prep.geometry.face_oval_region`) whose
grey level moved by more than `metrics.HARM_LEVEL`, the same share over an eye region and a mouth
region (`regions`), whether the frame came out untouched (bit for bit; live only: the infer
output is re-encoded), and the model's predicted mask (share of the crop above
`blend.MASK_THRESHOLD`, before and after the harm gate, the largest over the frame's faces). The
summaries (per photo, then over every frame of every photo) give the share of frames with at most
`metrics.HARM_OK_SHARE` of face pixels changed, the mean and p95 of each share.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import cv2
import jax
import numpy as np

from benchmarks import common, harm_lib
from data_prep import geometry
from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.evaluation import metrics
from deocc_jax.faces import FaceAnalyzer, largest_face
from deocc_jax.faces import landmarks as lmk
from deocc_jax.io import video as video_io
from deocc_jax.restoration import blend, infer_lib, smoothing
from deocc_jax.restoration.stabilize import StabilizerOptions
from deocc_jax.streaming import sources
from deocc_jax.streaming.pipeline import LivePipeline, PipelineOptions, warmup_faces_for
from deocc_jax.streaming.tracking import LandmarkTracker, TrackerOptions

CANVAS = (800, 600)   # (width, height) the photo is resized to
WINDOW = (640, 480)   # (width, height) of the clip
FRAMES, FPS = 90, 30.0
PATHS = ("live", "infer")
DEFAULT_PHOTO = "10.jpg"
NUM_PHOTOS = 8
# Eye and mouth regions: each eye's contour and the outer lips grown about their centre by
# these factors, so the lids, lashes and lip edges (where a smear shows first) are inside.
EYE_GROW, MOUTH_GROW = 1.6, 1.3
# Frames shown in the strip, as fractions of the clip.
STRIP_AT = (0.0, 0.35, 0.7)
STRIP_CELL = 192


# ----------------------------------------------------------------------------- the clip


def pan_offsets(frames: int, canvas: tuple[int, int] = CANVAS,
                window: tuple[int, int] = WINDOW) -> np.ndarray:
    """int [T, 2] (x, y) top-left corners of the window: one left-right sweep, two up-down.

    Cosine easing: the window starts at the top-left corner, reaches the far side at mid-clip
    and comes back, moving at most 9 px per frame over 90 frames of an 800x600 canvas (6 across).
    """
    mx, my = canvas[0] - window[0], canvas[1] - window[1]
    if mx < 0 or my < 0:
        raise errors.InvalidInputError(f"the window {window} is larger than the canvas {canvas}")
    t = np.arange(frames) / max(frames - 1, 1)
    x = mx * (1 - np.cos(2 * np.pi * t)) / 2
    y = my * (1 - np.cos(4 * np.pi * t)) / 2
    return np.round(np.stack([x, y], 1)).astype(int)


def fit_canvas(photo_rgb: np.ndarray, canvas: tuple[int, int] = CANVAS,
               aspect: str = "stretch") -> np.ndarray:
    """uint8 [H, W, 3] of the canvas size: the photo resized to it ("stretch", as the clip that
    first showed the problem was made), or scaled to fit with its aspect kept and the rest
    filled by repeating its edge pixels ("keep": faces not distorted, and no second face)."""
    if aspect == "stretch":
        return cv2.resize(photo_rgb, canvas, interpolation=cv2.INTER_CUBIC)
    if aspect != "keep":
        raise errors.InvalidInputError(f"--aspect={aspect}: choose stretch or keep")
    h, w = photo_rgb.shape[:2]
    s = min(canvas[0] / w, canvas[1] / h)
    nw, nh = min(canvas[0], round(w * s)), min(canvas[1], round(h * s))
    small = cv2.resize(photo_rgb, (nw, nh), interpolation=cv2.INTER_CUBIC)
    left, top = (canvas[0] - nw) // 2, (canvas[1] - nh) // 2
    return cv2.copyMakeBorder(small, top, canvas[1] - nh - top, left, canvas[0] - nw - left,
                              cv2.BORDER_REPLICATE)


def clip_frames(photo_rgb: np.ndarray, frames: int = FRAMES, canvas: tuple[int, int] = CANVAS,
                window: tuple[int, int] = WINDOW, aspect: str = "stretch") -> np.ndarray:
    """uint8 [T, H, W, 3]: `photo_rgb` fitted to `canvas` (`fit_canvas`), seen through a
    panning `window`."""
    big = fit_canvas(photo_rgb, canvas, aspect)
    w, h = window
    return np.stack([big[y:y + h, x:x + w] for x, y in pan_offsets(frames, canvas, window)])


def write_clip(frames: np.ndarray, path: str, fps: float = FPS) -> str:
    """Writes `frames` as H.264 (`io.video.VideoWriter`, as every deocc video), replacing `path`."""
    h, w = frames.shape[1:3]
    with video_io.VideoWriter(path, fps, w, h, overwrite=True) as writer:
        for f in frames:
            writer.write(f)
    return path


def read_frames(path: str) -> np.ndarray:
    """uint8 [T, H, W, 3]: every decoded frame of a video file."""
    with video_io.VideoReader(path) as reader:
        return np.stack([f.rgb for f in reader.timed_frames()])


# ----------------------------------------------------------------------------- regions


def _grown(points: np.ndarray, factor: float) -> np.ndarray:
    centre = points.mean(0)
    return centre + factor * (points - centre)


def _polygon_region(shape_hw: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """bool [H, W]: pixels at least half covered by the filled polygons (pixel coordinates)."""
    return geometry.fill_polygons(shape_hw, polygons) > 0.5


def regions(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """bool [H, W] regions of one face: "face" (the oval), "eyes" and "mouth".

    Args:
      landmarks: [478, 2] MediaPipe landmarks in pixels.
      shape_hw: the frame's (height, width).
    """
    lm = np.asarray(landmarks, np.float64)
    eyes = [_grown(lm[list(c)], EYE_GROW) for c in (lmk.LEFT_EYE_CONTOUR, lmk.RIGHT_EYE_CONTOUR)]
    return {"face": geometry.face_oval_region(lm, shape_hw),
            "eyes": _polygon_region(shape_hw, eyes),
            "mouth": _polygon_region(shape_hw, [_grown(lm[list(lmk.LIPS_OUTER)],
                                                               MOUTH_GROW)])}


# Jitted once per frame size: unjitted, every op of the measure would be compiled again for
# each new shape.
_CHANGED_SHARE = jax.jit(metrics.changed_share)


def changed_shares(output: np.ndarray, reference: np.ndarray,
                   region_maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Per region, the share of its pixels whose grey level moved by more than HARM_LEVEL.

    `metrics.changed_share`, the evaluation's harm measure, over the whole frame.
    """
    names = list(region_maps)
    n = len(names)
    out = np.broadcast_to(output[None].astype(np.float32) / 255.0, (n, *output.shape))
    ref = np.broadcast_to(reference[None].astype(np.float32) / 255.0, (n, *reference.shape))
    reg = np.stack([region_maps[k] for k in names])[..., None].astype(np.float32)
    shares = np.asarray(_CHANGED_SHARE(out, ref, reg))
    return {k: float(s) for k, s in zip(names, shares)}


def find_regions(frames: np.ndarray, landmarker_model: str | None = None
                 ) -> list[dict[str, np.ndarray] | None]:
    """The largest face's regions in each input frame (found on its own), None where none is."""
    found = []
    with FaceAnalyzer(mode="image", num_faces=1, model_path=landmarker_model) as analyzer:
        for f in frames:
            face = largest_face(analyzer.detect(f))
            found.append(None if face is None else regions(face.landmarks, f.shape[:2]))
    return found


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass
class MaskRecord:
    """One model call on a frame's faces: the largest predicted mask area, before and after the gate."""
    area: float
    area_gated: float


class RecordingModel:
    """A Predictor that passes every call on and keeps what its masks were.

    Calls on all-zero crops are the pipelines' warm-up (a real crop is never all black) and are
    not kept.
    """

    def __init__(self, model):
        self.model = model
        self.resolution, self.guided = model.resolution, model.guided
        self.description = getattr(model, "description", "a model")
        self.calls: list[MaskRecord] = []

    def __call__(self, images, masks=None):
        out = self.model(images) if masks is None else self.model(images, masks)
        if np.any(images):
            r = self.resolution
            m = np.asarray(out["mask"], np.float32).reshape(-1, r, r)
            hard = (m > blend.MASK_THRESHOLD).astype(np.uint8)
            self.calls.append(MaskRecord(
                float(hard.mean((1, 2)).max()),
                float(max(blend.gate_mask(h).mean() for h in hard))))
        return out


class _CountingTracker:
    """The shipped tracker, counting the faces it hands on per frame (to match model calls)."""

    def __init__(self, options: TrackerOptions, counts: list[int]):
        self._tracker = LandmarkTracker(options)
        self._counts = counts

    def __call__(self, rgb, time_s):
        faces = self._tracker(rgb, time_s)
        self._counts.append(len(faces))
        return faces

    def close(self):
        self._tracker.close()


class _Keep:
    """A pipeline sink that keeps every restored frame by index."""

    def __init__(self):
        self.frames: dict[int, np.ndarray] = {}

    def send(self, frame, restored):
        self.frames[frame.index] = restored


def _per_frame_masks(calls: list[MaskRecord], faces_per_frame: list[int] | None,
                     n_frames: int) -> list[MaskRecord | None]:
    """Model calls laid on frames: one call per frame with a face, in order (lossless runs)."""
    if faces_per_frame is None:  # the infer path does not say which frames had faces
        if len(calls) != n_frames:
            return [None] * n_frames
        return list(calls)
    it = iter(calls)
    return [next(it, None) if n else None for n in faces_per_frame]


def run_live(model: RecordingModel, clip: str, landmarker_model: str | None = None,
             beta: float = smoothing.DEFAULT_BETA
             ) -> tuple[list[np.ndarray], list[MaskRecord | None]]:
    """The clip through the live pipeline as `deocc_jax.live` runs a file in full.

    Returns:
      (restored frames, mask record per frame or None where no face was restored).
    """
    counts: list[int] = []
    tracker = TrackerOptions(landmarker_model=landmarker_model, beta=beta)
    source = sources.FileSource(clip, realtime=False)
    keep = _Keep()
    try:
        pipe = LivePipeline(source, model, [keep], PipelineOptions(
            lossless=True, tracker=tracker, stabilizer=StabilizerOptions(),
            warmup_faces=warmup_faces_for(tracker)),
            tracker_factory=lambda: _CountingTracker(tracker, counts))
        model.calls.clear()
        pipe.start()
        while pipe.running():
            time.sleep(0.05)
        pipe.join()
    finally:
        source.close()
    n = len(keep.frames)
    if sorted(keep.frames) != list(range(n)):
        raise RuntimeError(f"{clip}: the live pipeline lost frames ({sorted(keep.frames)[:5]}...)")
    return [keep.frames[i] for i in range(n)], _per_frame_masks(model.calls, counts, n)


def run_infer(model: RecordingModel, clip: str, out_path: str,
              landmarker_model: str | None = None, beta: float = smoothing.DEFAULT_BETA
              ) -> tuple[list[np.ndarray], list]:
    """The clip through `infer_lib.process_video` with `deocc_jax.infer`'s defaults.

    Returns:
      (decoded output frames, mask record per frame, or all None when the model calls cannot be
      laid on frames: some frame had no face).
    """
    model.calls.clear()
    infer_lib.process_video(model, clip, out_path, max_faces=8, landmarker_model=landmarker_model,
                            beta=beta, overwrite=True, quiet=True, log=lambda s: None)
    out = list(read_frames(out_path))
    return out, _per_frame_masks(model.calls, None, len(out))


# ----------------------------------------------------------------------------- measures


def frame_rows(inputs: np.ndarray, outputs: list[np.ndarray], found: list,
               masks: list[MaskRecord | None], bitwise: bool) -> list[dict]:
    """One row per frame (see the module docstring); shares are None where no face was found."""
    rows = []
    for i, (x, y, reg, m) in enumerate(zip(inputs, outputs, found, masks)):
        row = {"frame": i, "face_found": reg is not None}
        shares = changed_shares(y, x, reg) if reg is not None else {}
        for k in ("face", "eyes", "mouth"):
            row[k] = round(shares[k], 5) if k in shares else None
        row["untouched"] = bool(np.array_equal(x, y)) if bitwise else None
        row["mask_area"] = None if m is None else round(m.area, 5)
        row["mask_area_gated"] = None if m is None else round(m.area_gated, 5)
        rows.append(row)
    return rows


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p95": None}
    v = np.asarray(values, np.float64)
    return {"mean": round(float(v.mean()), 5), "p95": round(float(np.percentile(v, 95)), 5)}


def summarize(rows: list[dict]) -> dict:
    """Summary of frame rows: frames with <= HARM_OK_SHARE changed, mean/p95 per region, mask."""
    seen = [r for r in rows if r["face_found"]]
    face = [r["face"] for r in seen]
    out = {"frames": len(rows), "frames_with_face": len(seen),
           "frames_at_most_1pct": (round(float(np.mean(np.asarray(face) <= metrics.HARM_OK_SHARE)), 4)
                                   if face else None)}
    for k in ("face", "eyes", "mouth"):
        s = _stats([r[k] for r in seen])
        out[f"{k}_changed_mean"], out[f"{k}_changed_p95"] = s["mean"], s["p95"]
    bitwise = [r["untouched"] for r in rows if r["untouched"] is not None]
    out["frames_untouched"] = round(float(np.mean(bitwise)), 4) if bitwise else None
    # Untouched although a face was restored: the gate's doing (or an empty mask), not a face
    # the tracker missed.
    ran = [r["untouched"] for r in rows if r["untouched"] is not None and r["mask_area"] is not None]
    out["frames_untouched_when_restored"] = round(float(np.mean(ran)), 4) if ran else None
    masks = [r for r in rows if r["mask_area"] is not None]
    out["mask_area_mean"] = _stats([r["mask_area"] for r in masks])["mean"]
    out["frames_with_mask"] = sum(r["mask_area"] > 0 for r in masks) if masks else None
    out["frames_mask_gated_away"] = (sum(r["mask_area"] > 0 and r["mask_area_gated"] == 0
                                         for r in masks) if masks else None)
    return out


def codec_only_rows(decoded: np.ndarray, found: list, path: str, fps: float) -> list[dict]:
    """Frame rows of the decoded input encoded once more without a model (infer's floor)."""
    again = read_frames(write_clip(decoded, path, fps))
    return frame_rows(decoded, list(again), found, [None] * len(again), bitwise=False)


def strip(rows_of_cells: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 image: the given rows of equally sized cells, side by side, rows stacked."""
    width = max(len(r) for r in rows_of_cells)
    blank = np.zeros_like(rows_of_cells[0][0])
    return np.concatenate([np.concatenate(r + [blank] * (width - len(r)), 1)
                           for r in rows_of_cells], 0)


def face_cells(inputs: np.ndarray, outputs: list[np.ndarray], found: list,
               at: tuple[float, ...] = STRIP_AT, size: int = STRIP_CELL) -> list[np.ndarray]:
    """Input and output face crops (the oval's box, with a margin) of a few frames, in pairs."""
    cells = []
    for a in at:
        i = min(int(round(a * (len(inputs) - 1))), len(inputs) - 1)
        if found[i] is None:
            continue
        ys, xs = np.nonzero(found[i]["face"])
        c = np.array([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2])
        half = 0.6 * max(xs.max() - xs.min(), ys.max() - ys.min())
        h, w = inputs[i].shape[:2]
        x0, y0 = (np.maximum(c - half, 0)).astype(int)
        x1, y1 = int(min(c[0] + half, w)), int(min(c[1] + half, h))
        for img in (inputs[i], outputs[i]):
            cell = cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
            cells.append(cell)
    return cells


# ----------------------------------------------------------------------------- the run


def default_photos(faces_dir: str, num: int = NUM_PHOTOS) -> list[str]:
    """DEFAULT_PHOTO and `num - 1` others spread evenly over the folder (`harm_lib.pick_photos`)."""
    first = os.path.join(faces_dir, DEFAULT_PHOTO)
    others = [p for p in harm_lib.pick_photos(faces_dir, num) if p != first]
    return ([first] if os.path.isfile(first) else []) + others[:num - 1]


def resolve_photos(spec: list[str], faces_dir: str) -> list[str]:
    """--photos: names in `faces_dir` or paths; empty means `default_photos`."""
    if not spec:
        return default_photos(faces_dir)
    paths = [p if os.path.sep in p else os.path.join(faces_dir, p) for p in spec]
    for p in paths:
        if not os.path.isfile(p):
            raise errors.InputNotFoundError(f"--photos: {p} does not exist")
    return paths


@dataclasses.dataclass
class Settings:
    """What one run measures: the clip's shape and the video paths."""
    frames: int = FRAMES
    fps: float = FPS
    canvas: tuple[int, int] = CANVAS
    window: tuple[int, int] = WINDOW
    paths: tuple[str, ...] = PATHS
    aspect: str = "stretch"
    landmarker_model: str | None = None
    beta: float = smoothing.DEFAULT_BETA  # the one-euro speed coefficient of both paths


def run(models: list[tuple[str, object]], photos: list[str], scratch: str,
        settings: Settings = Settings(), log: Callable[[str], None] = print) -> dict:
    """Every photo's clip through every model and path; the JSON record and strip paths.

    Args:
      models: (label, a model path or None for the shipped one, or a Predictor object).
      photos: photo files.
      scratch: folder for the clips, outputs and strips (never the repository: the photos
        may not be redistributed).
      settings: the clip and the paths.
      log: where progress lines go.
    """
    bad = [p for p in settings.paths if p not in PATHS]
    if bad:
        raise errors.InvalidInputError(f"--paths: unknown {bad}; choose from {', '.join(PATHS)}")
    os.makedirs(scratch, exist_ok=True)
    load_before = os.getloadavg()[0]
    clips = []
    for photo in photos:
        image = infer_lib.read_rgb(photo)
        stem = os.path.splitext(os.path.basename(photo))[0]
        clip = write_clip(clip_frames(image, settings.frames, settings.canvas, settings.window,
                                      settings.aspect),
                          os.path.join(scratch, f"clip_{stem}.mp4"), settings.fps)
        decoded = read_frames(clip)
        found = find_regions(decoded, settings.landmarker_model)
        log(f"{os.path.basename(photo)}: {len(decoded)} frames, a face in "
            f"{sum(f is not None for f in found)}")
        clips.append((os.path.basename(photo), stem, clip, decoded, found))
    record: dict = {
        "clip": {"canvas": list(settings.canvas), "aspect": settings.aspect, "beta": settings.beta,
                 "window": list(settings.window),
                 "frames": settings.frames, "fps": settings.fps,
                 "pan": "cosine-eased: one left-right sweep, two up-down",
                 "photos": [os.path.abspath(p) for p in photos]},
        "harm_level_grey": round(metrics.HARM_LEVEL * 255),
        "ok_share": metrics.HARM_OK_SHARE,
        "face_region": "MediaPipe's face oval, landmarks found on each decoded input frame",
        "eye_region": f"each eye contour grown {EYE_GROW}x about its centre",
        "mouth_region": f"outer lips grown {MOUTH_GROW}x about their centre",
        "gate_min_component_frac": blend.MIN_COMPONENT_FRAC,
        "models": [], "strips": {},
    }
    if "infer" in settings.paths:
        record["codec_only"] = {}
        all_rows = []
        for name, stem, _, decoded, found in clips:
            rows = codec_only_rows(decoded, found, os.path.join(scratch, f"codec_{stem}.mp4"),
                                   settings.fps)
            record["codec_only"][name] = summarize(rows)
            all_rows += rows
        record["codec_only"]["overall"] = summarize(all_rows)
    for label, spec in models:
        base = spec if hasattr(spec, "resolution") else predictors.open_predictor(spec)
        if base.guided:
            raise errors.InvalidInputError(f"{label}: a guided model needs the occluder's mask; "
                                           "a clip with nothing over the face has none")
        model = RecordingModel(base)
        entry = {"label": label, "model": model.description,
                 "path": None if hasattr(spec, "resolution") else spec, "paths": {}}
        for path in settings.paths:
            per_photo, every, cells = {}, [], []
            for name, stem, clip, decoded, found in clips:
                start = time.perf_counter()
                if path == "live":
                    outs, masks = run_live(model, clip, settings.landmarker_model, settings.beta)
                else:
                    outs, masks = run_infer(model, clip, os.path.join(
                        scratch, f"out_{label}_{stem}.mp4"), settings.landmarker_model,
                        settings.beta)
                rows = frame_rows(decoded, outs, found, masks, bitwise=(path == "live"))
                summary = summarize(rows)
                per_photo[name] = {"summary": summary, "frames": rows,
                                   "seconds": round(time.perf_counter() - start, 2)}
                every += rows
                cells.append(face_cells(decoded, outs, found))
                log(f"{label} {path} {name}: {summary}")
            overall = summarize(every)
            overall["meets_target"] = (overall["frames_at_most_1pct"] is not None
                                       and overall["frames_at_most_1pct"] >= 0.95)
            entry["paths"][path] = {"overall": overall, "photos": per_photo}
            png = os.path.join(scratch, f"strip_{label}_{path}.png")
            cv2.imwrite(png, cv2.cvtColor(strip([c for c in cells if c]), cv2.COLOR_RGB2BGR))
            record["strips"][f"{label} {path}"] = png
            log(f"{label} {path} overall: {overall}")
        record["models"].append(entry)
    record["strip_layout"] = ("one row per photo; input | output face crops at "
                              f"{', '.join(f'{a:.0%}' for a in STRIP_AT)} of the clip")
    record["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    record["machine"] = common.machine_info()
    record["code"] = common.code_state()
    return record
