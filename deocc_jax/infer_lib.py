"""Face de-occlusion of whole photos and videos.

Per image: detect every face (MediaPipe), then `restoration.frames`: align
each to the training template, run the model on the aligned crops in one
batch, warp each result back and blend it into the original along a feathered
edge of the predicted occlusion mask. Pixels where the blend weight is 0 keep
their original values exactly, so everything outside the (dilated, feathered)
occluder is untouched. In videos the restored faces are stabilised over time
(`restoration.stabilize`) so they do not flicker. Guided models get the
occluder masks from `--mask`.

The model is anything `predictors.open_predictor` opens: the shipped model
(the default), a training workdir or pretrained folder (JAX), a SavedModel
export (TensorFlow), an .onnx (onnxruntime) or a .tflite (LiteRT) file.

Nothing is lost (issue 10): outputs that would replace an input are refused
before anything is read; an output folder that cannot be written is named as
such before the model loads; every output file appears complete or not at all
(`io.atomic` for photos, `io.video.VideoWriter` for video). Photos are read by
the decoder data prep uses (`io.images`, same checks, same pixel limit), so a
truncated JPEG is rejected rather than restored with grey rows; a photo with
alpha keeps it. A video that ends early is reported (frames decoded vs
expected).
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Callable

import cv2
import numpy as np

from deocc_jax import errors, predictors
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.io import atomic, images, progress
from deocc_jax.io import video as video_io
from deocc_jax.predictors import Predictor
from deocc_jax.restoration import frames
from deocc_jax.restoration.stabilize import StabilizerOptions, TemporalStabilizer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Output formats that can hold an alpha channel (RGBA inputs keep theirs there).
ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")
# The pixel limit of data prep (`--max_pixels` there and here): 12000x9000 photos
# would take gigabytes.
DEFAULT_MAX_PIXELS = images.DEFAULT_MAX_PIXELS



class GuideMasks:
    """`--mask` for photos: one mask image for every photo, or a folder matched by name.

    A mask is white (> 127) where the occluder is, either the photo's size (in the
    picture) or square (on the aligned face template); see `frames.GuideMask`.
    """

    def __init__(self, spec: str):
        self.spec = spec
        if not os.path.exists(spec):
            raise errors.InputNotFoundError(f"--mask {spec}: no such file or folder")
        self._by_stem = None
        if os.path.isdir(spec):
            self._by_stem = {os.path.splitext(n)[0]: os.path.join(spec, n)
                             for n in sorted(os.listdir(spec)) if n.lower().endswith(IMAGE_EXTENSIONS)}

    def for_photo(self, photo: str, shape_hw: tuple[int, int]) -> frames.GuideMask:
        path = self.spec
        if self._by_stem is not None:
            stem = os.path.splitext(os.path.basename(photo))[0]
            if stem not in self._by_stem:
                raise errors.InputNotFoundError(
                    f"--mask {self.spec}: no mask named {stem}.* for {photo}")
            path = self._by_stem[stem]
        return frames.GuideMask(path, shape_hw)


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
        raise errors.InputNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found at {spec!r}")
    return paths


def read_photo(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB [H, W, 3], uint8 alpha [H, W] or None) of a photo, via the prep decoder.

    Raises:
      images.DecodeError: unreadable (truncated, corrupt, empty), not an image,
        or more than `max_pixels` pixels; the message names the file.
    """
    image = images.read_image(path, max_pixels, keep_alpha=True)
    if image.shape[-1] == 4:
        return np.ascontiguousarray(image[..., :3]), np.ascontiguousarray(image[..., 3])
    return image, None


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB image (EXIF orientation applied, alpha composited over white).

    Raises:
      images.DecodeError: see `read_photo`.
    """
    return images.read_image(path, max_pixels)


def write_rgb(path: str, image: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Writes an RGB (or gray) image, with `alpha` when given, atomically.

    The file appears complete or not at all: it is encoded in memory and
    renamed into place (`io.atomic`).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        img = np.concatenate([img, alpha[..., None]], axis=-1)
    ext = os.path.splitext(path)[1].lower() or ".png"
    ok, data = cv2.imencode(ext, img)
    if not ok:
        raise errors.InvalidInputError(f"{path}: OpenCV cannot encode {ext} images")
    atomic.write_bytes(path, data.tobytes())


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
        raise errors.InvalidInputError(
            f"input photos share file names {dup}; their outputs would overwrite each other")
    return {p: os.path.join(output, s + ".png") for p, s in zip(inputs, stems)}


def _with_suffix(path: str, suffix: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}_{suffix}.png"


def _unchanged_copy_path(path: str, out_path: str) -> str:
    """Where a photo without a face is copied: the output name with the input's extension."""
    return os.path.splitext(out_path)[0] + os.path.splitext(path)[1]


def plan_photos(input_spec: str, output: str, *, save_masks: bool = False,
                side_by_side_out: bool = False) -> tuple[list[str], dict[str, str]]:
    """Inputs and outputs of a photo run, checked before anything is read.

    Returns:
      (input paths, input -> output path).

    Raises:
      errors.InputNotFoundError: no images at `input_spec`.
      errors.OutputExistsError: an output (restored photo, unchanged copy,
        mask or before|after) would replace an input, or `output` is the input
        folder itself.
      atomic.NotWritableError: an output folder cannot be created or written.
    """
    inputs = collect_images(input_spec)
    if os.path.isdir(input_spec) and os.path.isdir(output) and os.path.samefile(input_spec, output):
        raise errors.OutputExistsError(
            f"--output {output} is the input folder: restored photos would mix with (and could "
            "replace) the originals; choose another folder")
    outputs = _photo_outputs(inputs, output)
    candidates = []
    for path, out in outputs.items():
        candidates += [out, _unchanged_copy_path(path, out)]
        if save_masks:
            candidates.append(_with_suffix(out, "mask"))
        if side_by_side_out:
            candidates.append(_with_suffix(out, "side_by_side"))
    atomic.check_no_overlap(candidates, inputs)
    for folder in sorted({os.path.dirname(os.path.abspath(c)) for c in candidates}):
        atomic.require_writable_dir(folder)
    return inputs, outputs


def process_photos(model: Predictor, input_spec: str, output: str, *, save_masks: bool = False,
                   side_by_side_out: bool = False, max_faces: int = 8,
                   min_confidence: float = 0.3, landmarker_model: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, masks: GuideMasks | None = None,
                   quiet: bool = False, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Restores every face in every photo of `input_spec`.

    A photo that cannot be decoded (truncated, corrupt, not an image, more
    than `max_pixels`) is rejected exactly as data prep rejects it: with a
    single input that is an error; in a batch the others go on and the photo
    is listed with its reason (and counted in the summary line).

    Args:
      model: a blind Predictor.
      input_spec: image file, folder or glob.
      output: output file (single input with an image extension) or folder.
      save_masks: also write `<name>_mask.png` (predicted occlusion, photo px).
      side_by_side_out: also write `<name>_side_by_side.png` (before | after).
      max_faces: the most faces handled per photo.
      min_confidence: MediaPipe detection threshold.
      landmarker_model: explicit face_landmarker.task path.
      max_pixels: the pixel limit (the same as data prep's `--max_pixels`).
      masks: occluder masks for a guided model (`--mask`).
      quiet: no progress bar.
      log: where progress lines go.

    Returns:
      One report dict per photo: input, output, faces, status ("restored";
      "no_face", in which case the photo was copied unchanged; or "rejected",
      with "reason" and "error"), and extra files.

    Raises:
      errors.OutputExistsError, atomic.NotWritableError: see `plan_photos`
        (raised before any photo is read).
      images.DecodeError: the only input photo cannot be decoded.
    """
    frames.check_model(model, None if masks is None else masks.spec)
    inputs, outputs = plan_photos(input_spec, output, save_masks=save_masks,
                                  side_by_side_out=side_by_side_out)
    reports = []
    with FaceAnalyzer(mode="image", num_faces=max_faces, min_confidence=min_confidence,
                      model_path=landmarker_model) as analyzer, \
            progress.bar(total=len(inputs), desc="photos", unit="photo",
                         quiet=quiet or len(inputs) == 1) as bar:
        for path in inputs:
            bar.update()
            out_path = outputs[path]
            try:
                image, alpha = read_photo(path, max_pixels)
            except images.DecodeError as e:
                if len(inputs) == 1:
                    raise
                reports.append({"input": path, "output": None, "faces": 0, "files": [],
                                "status": "rejected", "reason": e.reason,
                                "error": errors.one_line(e)})
                log(f"{errors.one_line(e)}; skipped")
                continue
            faces = analyzer.detect(image)
            rep = {"input": path, "output": out_path, "faces": len(faces), "files": []}
            if not faces:
                # Nothing to restore: the photo goes through untouched (bytes copied).
                out_path = _unchanged_copy_path(path, out_path)
                atomic.copy_file(path, out_path)
                rep["output"] = out_path
                rep["status"] = "no_face"
                log(f"{path}: no face found; copied unchanged to {out_path}")
                reports.append(rep)
                continue
            if alpha is not None and os.path.splitext(out_path)[1].lower() not in ALPHA_EXTENSIONS:
                log(f"{path}: has an alpha channel, which {os.path.splitext(out_path)[1]} cannot "
                    "hold; it is dropped (write .png to keep it)")
                alpha = None
            guide = None if masks is None else masks.for_photo(path, image.shape[:2])
            result = frames.restore_frame(image, [f.landmarks for f in faces], model, guide=guide)
            restored = result.image
            write_rgb(out_path, restored, alpha)
            if save_masks:
                rep["files"].append(_with_suffix(out_path, "mask"))
                write_rgb(rep["files"][-1], result.mask_image())
            if side_by_side_out:
                rep["files"].append(_with_suffix(out_path, "side_by_side"))
                write_rgb(rep["files"][-1], side_by_side(image, restored))
            rep["status"] = "restored"
            log(f"{path}: {len(faces)} face(s) restored -> {out_path}")
            reports.append(rep)
    counts = {k: sum(r["status"] == k for r in reports) for k in ("restored", "no_face", "rejected")}
    line = (f"{len(reports)} photo(s): {counts['restored']} restored, {counts['no_face']} without "
            "a face (copied)")
    if counts["rejected"]:
        reasons = sorted({r["reason"] for r in reports if r["status"] == "rejected"})
        line += f", {counts['rejected']} rejected ({', '.join(reasons)})"
    log(line)
    return reports


# ----------------------------------------------------------------------------- video


def _video_output(input_spec: str, output: str) -> str:
    if video_io.is_video_path(output):
        return output
    stem = "camera" + input_spec if video_io.is_camera(input_spec) else \
        os.path.splitext(os.path.basename(input_spec))[0]
    return os.path.join(output, stem + ".mp4")


def _suffixed(path: str, suffix: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_{suffix}{ext}"


def plan_video(input_spec: str, output: str | None, *, save_masks: bool = False,
               side_by_side_out: bool = False, display: bool = False) -> dict[str, str]:
    """Output files of a video run ({"out", "mask"?, "sbs"?}), checked before anything is read.

    Raises:
      errors.InvalidInputError: no --output where one is needed, or a video
        extension that cannot be written.
      errors.OutputExistsError: an output is the input video (by real path).
      atomic.NotWritableError: the output folder cannot be created or written.
    """
    if output is None:
        if not (display and video_io.is_camera(input_spec)):
            raise errors.InvalidInputError(
                "--output is required (only a camera shown with --display may omit it)")
        return {}
    out = _video_output(input_spec, output)
    if os.path.splitext(out)[1].lower() not in video_io.WRITABLE_EXTENSIONS:
        raise errors.InvalidInputError(
            f"--output {out}: cannot write this video format; use one of "
            f"{', '.join(video_io.WRITABLE_EXTENSIONS)}")
    paths = {"out": out}
    if save_masks:
        paths["mask"] = _suffixed(out, "mask")
    if side_by_side_out:
        paths["sbs"] = _suffixed(out, "side_by_side")
    if not video_io.is_camera(input_spec):
        atomic.check_no_overlap(paths.values(), [input_spec])
    atomic.require_writable_dir(os.path.dirname(os.path.abspath(out)))
    return paths


def process_video(model: Predictor, input_spec: str, output: str | None, *, save_masks: bool = False,
                  side_by_side_out: bool = False, max_faces: int = 4, max_frames: int | None = None,
                  smoothing: bool = True, min_cutoff: float = 1.0, beta: float = 1.0,
                  min_confidence: float = 0.3, landmarker_model: str | None = None,
                  display: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  stabilize: bool = True, mask: str | None = None, quiet: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Restores faces in every frame of a video file or camera.

    Every decoded frame gives exactly one output frame (frames without a face
    are written unchanged) at the source's own timestamps, with its audio
    copied, so the result stays in sync with the original. Output files appear
    only once complete (a failure leaves no partial file). A file that ends
    before the frame count it declares is reported (log line and the
    "truncation" entry of the result).

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
      max_pixels: refuse frames larger than this (data prep's pixel limit).
      stabilize: average each restored face over time where it does not move
        (`restoration.stabilize`), so it does not flicker.
      mask: for a guided model, the occluder mask image (the frame's size, or
        square on the aligned face).
      quiet: no progress bar.
      log: where the summary goes.

    Returns:
      {"output", "frames", "frames_expected", "truncation", "fps_source",
      "fps_processed", "stage_ms", "files"}.
    """
    frames.check_model(model, mask)
    paths = plan_video(input_spec, output, save_masks=save_masks,
                       side_by_side_out=side_by_side_out, display=display)
    timer = video_io.StageTimer()
    smoother = video_io.LandmarkSmoother(min_cutoff, beta) if smoothing else None
    stabilizer = TemporalStabilizer(StabilizerOptions()) if stabilize else None
    # Compile / warm up for 1 and 2 faces before timing: the first call of a
    # jitted model includes compilation, which is not the steady frame rate.
    for n in (1, 2):
        warm = np.zeros((n, model.resolution, model.resolution, 3), np.uint8)
        model(warm, np.zeros(warm.shape[:3] + (1,), np.uint8) if model.guided else None)

    with video_io.VideoReader(input_spec) as reader, \
            FaceAnalyzer(mode="video", num_faces=max_faces, min_confidence=min_confidence,
                         model_path=landmarker_model) as analyzer:
        info = reader.info
        if info.width * info.height > max_pixels:
            raise images.DecodeError(
                images.TOO_LARGE, f"{info.width}x{info.height} = {info.width * info.height} pixels "
                f"per frame > limit {max_pixels}", input_spec)
        audio = input_spec if not video_io.is_camera(input_spec) and info.audio_streams else None
        guide = None if mask is None else frames.GuideMask(mask, (info.height, info.width))
        writers: dict[str, video_io.VideoWriter] = {}
        n_frames, faces_seen, last_ms = 0, 0, -1
        stopped_early = False
        start = time.perf_counter()
        ok = False
        try:
            if "out" in paths:
                writers["out"] = video_io.VideoWriter(paths["out"], info.fps, info.width,
                                                      info.height, audio_from=audio,
                                                      time_base=info.time_base)
            if "mask" in paths:
                writers["mask"] = video_io.VideoWriter(paths["mask"], info.fps, info.width,
                                                       info.height, time_base=info.time_base)
            if "sbs" in paths:
                writers["sbs"] = video_io.VideoWriter(paths["sbs"], info.fps, 2 * info.width,
                                                      info.height, time_base=info.time_base)
            bar = progress.bar(total=None if video_io.is_camera(input_spec) else info.frame_count,
                               desc=os.path.basename(input_spec), quiet=quiet or display)
            for frame in reader.timed_frames():
                bar.update()
                if max_frames is not None and frame.index >= max_frames:
                    stopped_early = True
                    break
                # MediaPipe's VIDEO mode needs strictly increasing milliseconds.
                ts_ms = max(int(round(frame.time_s * 1000.0)), last_ms + 1)
                last_ms = ts_ms
                with timer("detect"):
                    faces = analyzer.detect_video(frame.rgb, ts_ms)
                    lms = [f.landmarks for f in faces]
                    if smoother is not None:
                        lms = smoother(lms, frame.time_s)
                result = frames.restore_frame(frame.rgb, lms, model, stabilizer=stabilizer,
                                              time_s=frame.time_s, guide=guide, timer=timer)
                restored = result.image
                faces_seen += len(lms)
                with timer("io"):
                    if "out" in writers:
                        writers["out"].write(restored, time_s=frame.time_s)
                    if "mask" in writers:
                        m = result.mask_image()
                        writers["mask"].write(np.repeat(m[..., None], 3, axis=-1),
                                              time_s=frame.time_s)
                    if "sbs" in writers:
                        writers["sbs"].write(side_by_side(frame.rgb, restored), time_s=frame.time_s)
                    n_frames += 1
                    if display:
                        cv2.imshow("deocc (q to quit)", cv2.cvtColor(side_by_side(frame.rgb, restored),
                                                                   cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            stopped_early = True
                            break
            ok = True
        except KeyboardInterrupt:
            log("stopped by the user")
            stopped_early = ok = True  # what was written so far is kept
        finally:
            for w in writers.values():
                if ok:
                    w.close()  # renames the finished file into place
                else:
                    w.abort()  # an error: no partial output file
            bar.close()
            if display:
                cv2.destroyAllWindows()
        elapsed = time.perf_counter() - start
        truncation = None if stopped_early else reader.truncation
    stats = {
        "output": paths.get("out"),
        "files": [w.path for k, w in writers.items() if k != "out"],
        "frames": n_frames,
        "frames_expected": info.frame_count,
        "truncation": truncation,
        "faces": faces_seen,
        "fps_source": info.fps,
        "fps_processed": n_frames / elapsed if elapsed > 0 else 0.0,
        "stage_ms": timer.per_frame_ms(n_frames),
    }
    if truncation:
        log(f"warning: {truncation}")
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in stats["stage_ms"].items())
    log(f"{input_spec}: {n_frames} frames ({faces_seen} face detections) at {stats['fps_processed']:.1f} "
        f"frames/s (source {info.fps:.2f} fps); per frame: {stages}"
        + (f" -> {stats['output']}" if stats["output"] else ""))
    return stats


def is_video_input(input_spec: str) -> bool:
    """Whether `infer --input` names a camera or a video file (else photos)."""
    return video_io.is_camera(input_spec) or (os.path.isfile(input_spec)
                                              and video_io.is_video_path(input_spec))


def run(model_path: str | None, input_spec: str, output: str | None, *, checkpoint: str | int = "latest",
        **kwargs) -> Any:
    """Dispatches to photos or video by the input; returns their report.

    Inputs and outputs are checked (no output replacing an input, writable
    output folders) before the model is loaded or any input read.
    """
    outputs = {k: kwargs.get(k, False) for k in ("save_masks", "side_by_side_out")}
    if is_video_input(input_spec):
        plan_video(input_spec, output, display=kwargs.get("display", False), **outputs)
        return process_video(predictors.open_predictor(model_path, checkpoint), input_spec, output,
                             **kwargs)
    if output is None:
        raise errors.InvalidInputError("--output is required for photos")
    plan_photos(input_spec, output, **outputs)
    video_only = {k for k in ("max_frames", "smoothing", "min_cutoff", "beta", "display",
                              "stabilize", "mask") if k in kwargs}
    photo_kwargs = {k: v for k, v in kwargs.items() if k not in video_only}
    if kwargs.get("mask"):
        photo_kwargs["masks"] = GuideMasks(kwargs["mask"])
    return process_photos(predictors.open_predictor(model_path, checkpoint), input_spec, output,
                          **photo_kwargs)
