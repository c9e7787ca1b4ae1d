"""Face de-occlusion of whole photos and videos.

Per image: detect every face (MediaPipe), align each to the training template,
run the model on the aligned crops in one batch, warp each result back, and
blend it into the original along a feathered edge of the predicted occlusion
mask. Pixels where the blend weight is 0 keep their original values exactly,
so everything outside the (dilated, feathered) occluder is untouched.

The model is anything `predictors.open_predictor` opens: the shipped model
(the default), a training workdir or pretrained folder (JAX), a SavedModel
export (TensorFlow), an .onnx (onnxruntime) or a .tflite (LiteRT) file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import time
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from deocc_jax import predictors
from deocc_jax import video as video_io
from deocc_jax.faces import FaceAnalyzer, align
from deocc_jax.predictors import Predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Blending, in units of the crop side: the predicted mask (> MASK_THRESHOLD) is
# grown by DILATE_FRAC so the occluder's soft edge is replaced too, then
# feathered with a Gaussian of sigma FEATHER_FRAC so no seam shows.
MASK_THRESHOLD = 0.5
DILATE_FRAC = 0.03
FEATHER_FRAC = 0.015
# Blend weights below this are set to 0: they could not change a uint8 value.
MIN_ALPHA = 1.0 / 512.0


# ----------------------------------------------------------------------------- blending


def blend_alpha_crop(mask: np.ndarray, resolution: int) -> np.ndarray:
    """Feathered blend weights in crop space from a predicted mask.

    Args:
      mask: float [R, R] or [R, R, 1] occlusion probability.
      resolution: R.

    Returns:
      float32 [R, R] in [0, 1]: 1 inside the dilated mask, falling smoothly to
      0 outside it and towards the crop border (so no crop edge shows).
    """
    mask = np.asarray(mask, np.float32).reshape(resolution, resolution)
    hard = (mask > MASK_THRESHOLD).astype(np.uint8)
    sigma = max(FEATHER_FRAC * resolution, 0.5)
    grow = max(1, int(round(DILATE_FRAC * resolution + 2 * sigma)))
    hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma)
    # Ramp down over 3 sigma next to the crop border: the crop's footprint
    # edge never becomes a hard seam.
    ramp = np.clip((np.arange(resolution) + 0.5) / (3 * sigma), 0, 1)
    ramp = np.minimum(ramp, ramp[::-1])
    alpha *= np.minimum(ramp[:, None], ramp[None, :])
    alpha[alpha < MIN_ALPHA] = 0.0
    return alpha


def crop_roi(M: np.ndarray, resolution: int, shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo region a crop's footprint falls in, clipped to the photo."""
    h, w = shape_hw
    corners = np.array([[0, 0], [resolution, 0], [0, resolution], [resolution, resolution]], np.float64)
    pts = align.transform_landmarks(corners, align.inverse_matrix(M))
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _roi_matrix(M: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Image->crop matrix for pixels of a sub-image whose origin is (x0, y0)."""
    M = np.asarray(M, np.float64)
    return np.concatenate([M[:, :2], (M[:, :2] @ np.array([x0, y0]) + M[:, 2])[:, None]], axis=1)


def paste_face(image: np.ndarray, restored_crop: np.ndarray, alpha_crop: np.ndarray,
               M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blends a restored crop back into the image.

    Only the crop's footprint is warped (not the whole photo), which keeps the
    cost per face independent of the photo size.

    Args:
      image: uint8 [H, W, 3] the photo (after earlier faces were pasted).
      restored_crop: uint8 [R, R, 3] model output for this face.
      alpha_crop: float32 [R, R] blend weights in crop space.
      M: 2x3 image -> crop matrix used for the crop.

    Returns:
      (uint8 [H, W, 3] blended image, float32 [H, W] blend weights). Where the
      weight is 0 the image is returned bit-for-bit unchanged.
    """
    h, w = image.shape[:2]
    weights = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = crop_roi(M, alpha_crop.shape[0], (h, w))
    if x1 <= x0 or y1 <= y0:
        return image, weights
    Mr = _roi_matrix(M, x0, y0)
    alpha = align.warp_back(alpha_crop, Mr, (y1 - y0, x1 - x0)).astype(np.float32)
    alpha[alpha < MIN_ALPHA] = 0.0
    region = alpha > 0
    if not region.any():
        return image, weights
    restored = align.warp_back(restored_crop, Mr, (y1 - y0, x1 - x0)).astype(np.float32)
    roi = image[y0:y1, x0:x1]
    orig = roi.astype(np.float32)
    mixed = orig + alpha[..., None] * (restored - orig)
    out = image.copy()
    out_roi = out[y0:y1, x0:x1]
    out_roi[region] = np.clip(np.round(mixed[region]), 0, 255).astype(np.uint8)
    weights[y0:y1, x0:x1] = alpha
    return out, weights


@dataclasses.dataclass
class FaceOutput:
    """One processed face."""
    matrix: np.ndarray        # 2x3 image -> crop
    crop: np.ndarray          # uint8 [R, R, 3] aligned input
    restored: np.ndarray      # uint8 [R, R, 3] model output
    mask: np.ndarray          # float32 [R, R] predicted occlusion probability


def _require_blind(model: Predictor) -> None:
    if model.guided:
        raise ValueError(
            f"{model.description} is a guided model: it needs the occluder mask as input, which "
            "real photos do not have. Use a blind model (one that predicts its own mask).")


def restore_faces(image: np.ndarray, landmarks: Sequence[np.ndarray], model: Predictor,
                  timer: video_io.StageTimer | None = None) -> tuple[np.ndarray, np.ndarray, list[FaceOutput]]:
    """Restores every face in one RGB image.

    Args:
      image: uint8 [H, W, 3] RGB.
      landmarks: one [478, 2] pixel landmark array per face.
      model: a blind Predictor (it predicts its own mask).
      timer: optional StageTimer receiving "align", "model" and "blend" times.

    Returns:
      (restored image, float32 [H, W] max blend weight over faces, per-face outputs).
    """
    timer = timer or video_io.StageTimer()
    h, w = image.shape[:2]
    if not landmarks:
        return image, np.zeros((h, w), np.float32), []
    _require_blind(model)
    r = model.resolution
    with timer("align"):
        mats = [align.alignment_matrix(lm, r) for lm in landmarks]
        crops = np.stack([align.warp_to_crop(image, m, r) for m in mats])
    with timer("model"):
        out = model(crops)
    faces = [FaceOutput(m, c, d, np.asarray(k, np.float32).reshape(r, r))
             for m, c, d, k in zip(mats, crops, out["deoccluded"], out["mask"])]
    with timer("blend"):
        result, weights = image, np.zeros((h, w), np.float32)
        for f in faces:
            result, alpha = paste_face(result, f.restored, blend_alpha_crop(f.mask, r), f.matrix)
            weights = np.maximum(weights, alpha)
    return result, weights, faces


def mask_image(faces: Sequence[FaceOutput], shape_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] predicted occlusion probability of all faces, in photo pixels."""
    full = np.zeros(shape_hw, np.float32)
    for f in faces:
        x0, y0, x1, y1 = crop_roi(f.matrix, f.mask.shape[0], shape_hw)
        if x1 > x0 and y1 > y0:
            part = align.warp_back(f.mask, _roi_matrix(f.matrix, x0, y0), (y1 - y0, x1 - x0))
            full[y0:y1, x0:x1] = np.maximum(full[y0:y1, x0:x1], part)
    return np.clip(np.round(full * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- photos


def collect_images(spec: str) -> list[str]:
    """Image paths from a file, a folder (non-recursive) or a glob pattern."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        paths = [os.path.join(spec, n) for n in os.listdir(spec)]
    else:
        paths = glob.glob(spec)
    paths = sorted(p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found at {spec!r}")
    return paths


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB image (EXIF orientation applied); a clear error if unreadable."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image (OpenCV could not decode it)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_rgb(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, img):
        raise IOError(f"could not write image {path!r}")


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.concatenate([before, after], axis=1)


def _photo_outputs(inputs: list[str], output: str) -> dict[str, str]:
    """Output path per input. A single input may go to a file path; else a folder.

    Restored photos are PNG (lossless) so that untouched pixels stay untouched;
    re-encoding a JPEG would change every pixel a little.
    """
    if len(inputs) == 1 and output.lower().endswith(IMAGE_EXTENSIONS):
        return {inputs[0]: output}
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"input photos share file names {dup}; their outputs would overwrite each other")
    return {p: os.path.join(output, s + ".png") for p, s in zip(inputs, stems)}


def _with_suffix(path: str, suffix: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}_{suffix}.png"


def process_photos(model: Predictor, input_spec: str, output: str, *, save_masks: bool = False,
                   side_by_side_out: bool = False, max_faces: int = 8,
                   min_confidence: float = 0.3, landmarker_model: str | None = None,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Restores every face in every photo of `input_spec`.

    Args:
      model: a blind Predictor.
      input_spec: image file, folder or glob.
      output: output file (single input with an image extension) or folder.
      save_masks: also write `<name>_mask.png` (predicted occlusion, photo px).
      side_by_side_out: also write `<name>_side_by_side.png` (before | after).
      max_faces: the most faces handled per photo.
      min_confidence: MediaPipe detection threshold.
      landmarker_model: explicit face_landmarker.task path.
      log: where progress lines go.

    Returns:
      One report dict per photo: input, output, faces, status ("restored" or
      "no_face", in which case the photo was copied unchanged), and extra files.
    """
    _require_blind(model)
    inputs = collect_images(input_spec)
    outputs = _photo_outputs(inputs, output)
    reports = []
    with FaceAnalyzer(mode="image", num_faces=max_faces, min_confidence=min_confidence,
                      model_path=landmarker_model) as analyzer:
        for path in inputs:
            image = read_rgb(path)
            out_path = outputs[path]
            faces = analyzer.detect(image)
            rep = {"input": path, "output": out_path, "faces": len(faces), "files": []}
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            if not faces:
                # Nothing to restore: the photo goes through untouched.
                if os.path.splitext(path)[1].lower() == os.path.splitext(out_path)[1].lower():
                    shutil.copyfile(path, out_path)
                else:
                    out_path = os.path.splitext(out_path)[0] + os.path.splitext(path)[1]
                    shutil.copyfile(path, out_path)
                    rep["output"] = out_path
                rep["status"] = "no_face"
                log(f"{path}: no face found; copied unchanged to {out_path}")
                reports.append(rep)
                continue
            restored, _, face_outs = restore_faces(image, [f.landmarks for f in faces], model)
            write_rgb(out_path, restored)
            if save_masks:
                rep["files"].append(_with_suffix(out_path, "mask"))
                write_rgb(rep["files"][-1], mask_image(face_outs, image.shape[:2]))
            if side_by_side_out:
                rep["files"].append(_with_suffix(out_path, "side_by_side"))
                write_rgb(rep["files"][-1], side_by_side(image, restored))
            rep["status"] = "restored"
            log(f"{path}: {len(faces)} face(s) restored -> {out_path}")
            reports.append(rep)
    n_none = sum(r["status"] == "no_face" for r in reports)
    log(f"{len(reports)} photo(s): {len(reports) - n_none} restored, {n_none} without a face (copied)")
    return reports


# ----------------------------------------------------------------------------- video


def _video_output(input_spec: str, output: str) -> str:
    if video_io.is_video_path(output):
        return output
    stem = "camera" + input_spec if video_io.is_camera(input_spec) else \
        os.path.splitext(os.path.basename(input_spec))[0]
    return os.path.join(output, stem + ".mp4")


def process_video(model: Predictor, input_spec: str, output: str | None, *, save_masks: bool = False,
                  side_by_side_out: bool = False, max_faces: int = 4, max_frames: int | None = None,
                  smoothing: bool = True, min_cutoff: float = 1.0, beta: float = 1.0,
                  min_confidence: float = 0.3, landmarker_model: str | None = None,
                  display: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Restores faces in every frame of a video file or camera.

    Every input frame gives exactly one output frame (frames without a face are
    written unchanged) and the output keeps the source frame rate, so the
    result stays in sync with the original's audio and timing.

    Args:
      model: a blind Predictor.
      input_spec: video file path or camera index ("0").
      output: output video file or folder; may be None for a camera with display.
      save_masks: also write `<name>_mask.mp4`.
      side_by_side_out: also write `<name>_side_by_side.mp4`.
      max_faces: the most faces tracked per frame.
      max_frames: stop after this many frames (cameras run until stopped).
      smoothing: one-euro smoothing of landmarks across frames.
      min_cutoff, beta: one-euro parameters (Hz, face sizes per second).
      min_confidence: MediaPipe detection/tracking threshold.
      landmarker_model: explicit face_landmarker.task path.
      display: show frames in a window (press q to stop).
      log: where the summary goes.

    Returns:
      {"output", "frames", "fps_source", "fps_processed", "stage_ms", "files"}.
    """
    _require_blind(model)
    if output is None and not (display and video_io.is_camera(input_spec)):
        raise ValueError("--output is required (only a camera shown with --display may omit it)")
    timer = video_io.StageTimer()
    smoother = video_io.LandmarkSmoother(min_cutoff, beta) if smoothing else None
    # Compile / warm up for 1 and 2 faces before timing: the first call of a
    # jitted model includes compilation, which is not the steady frame rate.
    warm = np.zeros((1, model.resolution, model.resolution, 3), np.uint8)
    model(warm)
    model(np.concatenate([warm, warm]))

    with video_io.VideoReader(input_spec) as reader, \
            FaceAnalyzer(mode="video", num_faces=max_faces, min_confidence=min_confidence,
                         model_path=landmarker_model) as analyzer:
        info = reader.info
        writers: dict[str, video_io.VideoWriter] = {}
        out_path = None
        if output is not None:
            out_path = _video_output(input_spec, output)
            writers["out"] = video_io.VideoWriter(out_path, info.fps, info.width, info.height)
            if save_masks:
                writers["mask"] = video_io.VideoWriter(
                    os.path.splitext(out_path)[0] + "_mask" + os.path.splitext(out_path)[1],
                    info.fps, info.width, info.height)
            if side_by_side_out:
                writers["sbs"] = video_io.VideoWriter(
                    os.path.splitext(out_path)[0] + "_side_by_side" + os.path.splitext(out_path)[1],
                    info.fps, 2 * info.width, info.height)
        frames, faces_seen = 0, 0
        start = time.perf_counter()
        try:
            for index, ts_ms, frame in reader.frames():
                if max_frames is not None and index >= max_frames:
                    break
                with timer("detect"):
                    faces = analyzer.detect_video(frame, ts_ms)
                    lms = [f.landmarks for f in faces]
                    if smoother is not None:
                        lms = smoother(lms, ts_ms / 1000.0)
                restored, _, face_outs = restore_faces(frame, lms, model, timer)
                faces_seen += len(lms)
                with timer("io"):
                    if "out" in writers:
                        writers["out"].write(restored)
                    if "mask" in writers:
                        m = mask_image(face_outs, frame.shape[:2])
                        writers["mask"].write(np.repeat(m[..., None], 3, axis=-1))
                    if "sbs" in writers:
                        writers["sbs"].write(side_by_side(frame, restored))
                    if display:
                        cv2.imshow("deocc (q to quit)", cv2.cvtColor(side_by_side(frame, restored),
                                                                   cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            frames += 1
                            break
                frames += 1
        except KeyboardInterrupt:
            log("stopped by the user")
        finally:
            for w in writers.values():
                w.close()
            if display:
                cv2.destroyAllWindows()
        elapsed = time.perf_counter() - start
    stats = {
        "output": out_path,
        "files": [w.path for k, w in writers.items() if k != "out"],
        "frames": frames,
        "faces": faces_seen,
        "fps_source": info.fps,
        "fps_processed": frames / elapsed if elapsed > 0 else 0.0,
        "stage_ms": timer.per_frame_ms(frames),
    }
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in stats["stage_ms"].items())
    log(f"{input_spec}: {frames} frames ({faces_seen} face detections) at {stats['fps_processed']:.1f} "
        f"frames/s (source {info.fps:.2f} fps); per frame: {stages}"
        + (f" -> {out_path}" if out_path else ""))
    return stats


def run(model_path: str | None, input_spec: str, output: str | None, *, checkpoint: str | int = "latest",
        **kwargs) -> Any:
    """Dispatches to photos or video by the input; returns their report."""
    model = predictors.open_predictor(model_path, checkpoint)
    if video_io.is_camera(input_spec) or (os.path.isfile(input_spec) and video_io.is_video_path(input_spec)):
        return process_video(model, input_spec, output, **kwargs)
    if output is None:
        raise ValueError("--output is required for photos")
    video_only = {k for k in ("max_frames", "smoothing", "min_cutoff", "beta", "display")
                  if k in kwargs}
    photo_kwargs = {k: v for k, v in kwargs.items() if k not in video_only}
    return process_photos(model, input_spec, output, **photo_kwargs)
