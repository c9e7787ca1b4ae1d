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

Nothing is lost: outputs that would replace an input are refused
before anything is read; an output folder that cannot be written is named as
such before the model loads; every output file appears complete or not at all
(`io.atomic` for photos, `io.video.VideoWriter` for video). Photos are read by
the decoder data prep uses (`io.images`, same checks, same pixel limit), so a
truncated JPEG is rejected rather than restored with grey rows; a photo with
alpha keeps it. A video that ends early is reported (frames decoded vs
expected).

Over 500 lines on purpose: photos and videos share the output plan, the writer policy and the
report; splitting them apart would split those.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Callable

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.io import assets
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.faces.cascade import DEFAULT_MIN_FACE_PX
from deocc_jax.io import atomic, images, progress, timing
from deocc_jax.io import video as video_io
from deocc_jax.artifacts.predictors import Predictor
from deocc_jax.restoration import frames
from deocc_jax.restoration.smoothing import DEFAULT_BETA, DEFAULT_MIN_CUTOFF, LandmarkSmoother
from deocc_jax.restoration.stabilize import StabilizerOptions, TemporalStabilizer

# A GIF is read as its first frame, as data prep reads it (and says so).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Output formats that can hold an alpha channel (RGBA inputs keep theirs there).
ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")
# The pixel limit of data prep (`--max_pixels` there and here): 12000x9000 photos
# would take gigabytes.
DEFAULT_MAX_PIXELS = images.DEFAULT_MAX_PIXELS
# PNG without compression: zlib level 0 alone still spends the time on choosing
# row filters (15 of the 17 ms of the default for a 640x480 photo), so those are off too.
STORED_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]



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
    return _split_alpha(images.read_image(path, max_pixels, keep_alpha=True))


def read_photo_frames(path: str, max_pixels: int = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """`read_photo`, and the file's frame count: more than 1 for an animation (first frame read).

    Raises:
      images.DecodeError: see `read_photo`.
    """
    data = images.read_file(path)
    rgb, alpha = decode_photo(data, max_pixels, name=path)
    return rgb, alpha, images.animation_frames(data)


def decode_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """`read_photo` of encoded bytes (a request body, a file read by Beam); `name` for messages.

    Raises:
      images.DecodeError: see `read_photo`.
    """
    return _split_alpha(images.decode_image(data, max_pixels, keep_alpha=True, path=name))


def _split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if image.shape[-1] == 4:
        return np.ascontiguousarray(image[..., :3]), np.ascontiguousarray(image[..., 3])
    return image, None


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB image (EXIF orientation applied, alpha composited over white).

    Raises:
      images.DecodeError: see `read_photo`.
    """
    return images.read_image(path, max_pixels)


def write_rgb(path: str, image: np.ndarray, alpha: np.ndarray | None = None, *,
              overwrite: bool = False) -> None:
    """Writes an RGB (or gray) image, with `alpha` when given, atomically.

    The file appears complete or not at all: it is encoded in memory and
    renamed into place (`io.atomic`).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_bytes(path, encode_image(image, alpha, os.path.splitext(path)[1] or ".png", path),
                       overwrite=overwrite)


def encode_image(image: np.ndarray, alpha: np.ndarray | None = None, ext: str = ".png",
                 name: str | None = None, *, compress: bool = True) -> bytes:
    """The bytes `write_rgb` writes: RGB (or gray) `image`, with `alpha` when given, as `ext`.

    Args:
      image: uint8 RGB [H, W, 3] or gray [H, W].
      alpha: uint8 [H, W] or None.
      ext: the format, as a file extension.
      name: names the image in errors.
      compress: False (PNG only): stored without compression or filtering
        (`STORED_PNG`), lossless like the default but about 8x faster to
        encode and 2.3x larger (640x480 photos: 2 ms and 900 KiB, against
        17 ms and 390 KiB); what the HTTP service sends unless told otherwise.

    Raises:
      errors.InvalidInputError: OpenCV cannot encode `ext` (named with `name`).
    """
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        img = np.concatenate([img, alpha[..., None]], axis=-1)
    ext = ext.lower()
    params = STORED_PNG if not compress and ext == ".png" else []
    ok, data = cv2.imencode(ext, img, params)
    if not ok:
        raise errors.InvalidInputError(f"{name or 'image'}: OpenCV cannot encode {ext} images")
    return data.tobytes()


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.concatenate([before, after], axis=1)


def photo_outputs(inputs: list[str], output: str) -> dict[str, str]:
    """Where each restored photo is written: `infer`'s names, which the Beam job reuses.

    A single input may go to a file path (`output` with an image extension);
    otherwise each goes into the folder `output` as `<stem>.png`. Restored
    photos are PNG (lossless) so that untouched pixels stay untouched;
    re-encoding a JPEG would change every pixel a little.

    Args:
      inputs: the input photo paths.
      output: an output file (one input) or folder.

    Returns:
      input path -> output path.

    Raises:
      errors.InvalidInputError: two inputs share a stem (both would be
        written to the same file).
    """
    if len(inputs) == 1 and output.lower().endswith(IMAGE_EXTENSIONS):
        return {inputs[0]: output}
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    first: dict[str, str] = {}
    for p, s in zip(inputs, stems):
        if s in first:
            raise errors.InvalidInputError(
                f"input photos {first[s]} and {p} share the name {s}: both would be written to "
                f"{os.path.join(output, s + '.png')}; rename one")
        first[s] = p
    return {p: os.path.join(output, s + ".png") for p, s in zip(inputs, stems)}


def _with_suffix(path: str, suffix: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}_{suffix}.png"


def unchanged_copy_path(path: str, out_path: str) -> str:
    """Where a photo without a face is copied, bytes unchanged (`infer` and the Beam job).

    Args:
      path: the input photo.
      out_path: its restored photo's path (`photo_outputs`).

    Returns:
      `out_path` with the input's extension instead of .png.
    """
    return os.path.splitext(out_path)[0] + os.path.splitext(path)[1]


def plan_photos(input_spec: str, output: str, *, save_masks: bool = False,
                side_by_side_out: bool = False, overwrite: bool = False,
                report: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Inputs and every output of a photo run, checked together before anything is read.

    Nothing is created here: output folders appear with their first file.

    Args:
      input_spec: image file, folder or glob.
      output: output file (single input with an image extension) or folder.
      save_masks, side_by_side_out: whether masks and before|after images are written.
      overwrite: whether existing outputs may be replaced.
      report: the run's report file (`--report`), planned with the rest.

    Returns:
      (input paths, input -> output path).

    Raises:
      errors.InputNotFoundError: no images at `input_spec`.
      errors.OutputExistsError: an output (restored photo, unchanged copy,
        mask, before|after or report) would replace an input, two outputs
        share a name, an output exists and not `overwrite`, or `output` is the
        input folder itself.
      atomic.NotWritableError: an output folder cannot be created or written.
    """
    inputs = collect_images(input_spec)
    if os.path.isdir(input_spec) and os.path.isdir(output) and os.path.samefile(input_spec, output):
        raise errors.OutputExistsError(
            f"--output {output} is the input folder: restored photos would mix with (and could "
            "replace) the originals; choose another folder")
    outputs = photo_outputs(inputs, output)
    planned = []
    for path, out in outputs.items():
        # Restored, or copied unchanged when no face is found: one of the two, never both.
        planned += [(f"the output of {path}", out),
                    (f"the output of {path}", unchanged_copy_path(path, out))]
        if save_masks:
            planned.append((f"the mask of {path}", _with_suffix(out, "mask")))
        if side_by_side_out:
            planned.append((f"the before|after of {path}", _with_suffix(out, "side_by_side")))
    if report:
        planned.append(("the report (--report)", report))
    atomic.plan_outputs(planned, inputs, overwrite=overwrite)
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for _, p in planned}):
        atomic.require_writable_dir(folder, create=False)
    return inputs, outputs


def process_photos(model: Predictor, input_spec: str, output: str, *, save_masks: bool = False,
                   side_by_side_out: bool = False, max_faces: int = 8,
                   min_confidence: float = 0.3, landmarker_model: str | None = None,
                   min_face_px: float = DEFAULT_MIN_FACE_PX,
                   max_pixels: int = DEFAULT_MAX_PIXELS, masks: GuideMasks | None = None,
                   overwrite: bool = False, stop: errors.StopSignals | None = None,
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
      min_face_px: the smallest face restored (box side, pixels); smaller
        ones are counted and named in the photo's line.
      max_pixels: the pixel limit (the same as data prep's `--max_pixels`).
      masks: occluder masks for a guided model (`--mask`).
      overwrite: replace existing outputs (else they are refused before any
        photo is read).
      stop: a SIGINT/SIGTERM request; once set, no further photo is started
        (those written so far are complete and kept).
      quiet: no progress bar.
      log: where progress lines go.

    Returns:
      One report dict per photo done: input, output, faces, faces_too_small,
      status ("restored"; "no_face", in which case the photo was copied
      unchanged and "no_face_reason" says why; or "rejected", with "reason"
      and "error"), and extra files.

    Raises:
      errors.OutputExistsError, atomic.NotWritableError: see `plan_photos`
        (raised before any photo is read).
      images.DecodeError: the only input photo cannot be decoded.
    """
    frames.check_model(model, None if masks is None else masks.spec)
    inputs, outputs = plan_photos(input_spec, output, save_masks=save_masks,
                                  side_by_side_out=side_by_side_out, overwrite=overwrite)
    reports = []
    with FaceAnalyzer(mode="image", num_faces=max_faces, min_confidence=min_confidence,
                      model_path=landmarker_model, min_face_px=min_face_px) as analyzer, \
            progress.bar(total=len(inputs), desc="photos", unit="photo",
                         quiet=quiet or len(inputs) == 1) as bar:
        for path in inputs:
            if stop is not None and stop.requested:
                break
            bar.update()
            out_path = outputs[path]
            try:
                image, alpha, num_frames = read_photo_frames(path, max_pixels)
            except images.DecodeError as e:
                if len(inputs) == 1:
                    raise
                reports.append({"input": path, "output": None, "faces": 0, "files": [],
                                "status": "rejected", "reason": e.reason,
                                "error": errors.one_line(e)})
                log(f"{errors.one_line(e)}; skipped")
                continue
            if num_frames > 1:
                log(f"{path}: an animation of {num_frames} frames; only its first frame is used")
            search = analyzer.find(image)
            faces = search.faces
            rep = {"input": path, "output": out_path, "faces": len(faces),
                   "faces_too_small": len(search.too_small), "files": [],
                   "animation_frames": num_frames}
            small = (f"; {len(search.too_small)} face(s) below --min_face_px={min_face_px:g} left as "
                     "they are" if search.too_small else "")
            if not faces:
                # Nothing to restore: the photo goes through untouched (bytes copied).
                out_path = unchanged_copy_path(path, out_path)
                atomic.copy_file(path, out_path, overwrite=overwrite)
                rep["output"] = out_path
                rep["status"] = "no_face"
                rep["no_face_reason"] = search.reason
                log(f"{path}: no face found; copied unchanged to {out_path} ({search.reason}{small})")
                reports.append(rep)
                continue
            if alpha is not None and os.path.splitext(out_path)[1].lower() not in ALPHA_EXTENSIONS:
                log(f"{path}: has an alpha channel, which {os.path.splitext(out_path)[1]} cannot "
                    "hold; it is dropped (write .png to keep it)")
                alpha = None
            guide = None if masks is None else masks.for_photo(path, image.shape[:2])
            result = frames.restore_frame(image, [f.landmarks for f in faces], model, guide=guide)
            restored = result.image
            write_rgb(out_path, restored, alpha, overwrite=overwrite)
            if save_masks:
                rep["files"].append(_with_suffix(out_path, "mask"))
                write_rgb(rep["files"][-1], result.mask_image(), overwrite=overwrite)
            if side_by_side_out:
                rep["files"].append(_with_suffix(out_path, "side_by_side"))
                write_rgb(rep["files"][-1], side_by_side(image, restored), overwrite=overwrite)
            rep["status"] = "restored"
            log(f"{path}: {len(faces)} face(s) restored -> {out_path}{small}")
            reports.append(rep)
    counts = {k: sum(r["status"] == k for r in reports) for k in ("restored", "no_face", "rejected")}
    why = {}
    for r in reports:
        if r["status"] == "no_face":
            why[r["no_face_reason"]] = why.get(r["no_face_reason"], 0) + 1
    line = (f"{len(reports)} photo(s): {counts['restored']} restored, {counts['no_face']} without "
            "a face (copied" + "".join(f"; {n} {k}" for k, n in sorted(why.items())) + "); "
            f"{sum(r['faces'] for r in reports)} face(s) restored")
    if len(reports) < len(inputs):
        line = f"stopped by {stop.name} after {len(reports)} of {len(inputs)} photos; " + line
    if counts["rejected"]:
        reasons = sorted({r["reason"] for r in reports if r["status"] == "rejected"})
        line += f", {counts['rejected']} rejected ({', '.join(reasons)})"
    animations = sum(r.get("animation_frames", 1) > 1 for r in reports)
    if animations:
        line += f"; {animations} animation(s), first frame only"
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
               side_by_side_out: bool = False, display: bool = False, overwrite: bool = False,
               report: str | None = None) -> dict[str, str]:
    """Output files of a video run ({"out", "mask"?, "sbs"?}), checked before anything is read.

    Nothing is created here: the output folder appears with the first frame.
    `report` (`--report`) is planned with the videos.

    Raises:
      errors.InvalidInputError: no --output where one is needed, or a video
        extension that cannot be written.
      errors.OutputExistsError: an output is the input video (by real path),
        two outputs share a name, or an output exists and not `overwrite`.
      atomic.NotWritableError: the output folder cannot be created or written.
    """
    planned = [("the report (--report)", report)] if report else []
    if output is None:
        if not (display and video_io.is_camera(input_spec)):
            raise errors.InvalidInputError(
                "--output is required (only a camera shown with --display may omit it)")
        atomic.plan_outputs(planned, overwrite=overwrite)
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
    names = {"out": "the restored video", "mask": "the mask video", "sbs": "the before|after video"}
    planned += [(names[k], p) for k, p in paths.items()]
    atomic.plan_outputs(planned, [] if video_io.is_camera(input_spec) else [input_spec],
                        overwrite=overwrite)
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for _, p in planned}):
        atomic.require_writable_dir(folder, create=False)
    return paths


def _open_video_writers(writers: dict[str, video_io.VideoWriter], paths: dict[str, str],
                        info: video_io.VideoInfo, audio: str | None, overwrite: bool) -> None:
    """Adds a VideoWriter per planned output to `writers` (as each opens, so a failure aborts those open)."""
    sizes = {"out": info.width, "mask": info.width, "sbs": 2 * info.width}
    for key, path in paths.items():
        writers[key] = video_io.VideoWriter(path, info.fps, sizes[key], info.height,
                                            audio_from=audio if key == "out" else None,
                                            time_base=info.time_base, overwrite=overwrite)


def process_video(model: Predictor, input_spec: str, output: str | None, *, save_masks: bool = False,
                  side_by_side_out: bool = False, max_faces: int = 4, max_frames: int | None = None,
                  smoothing: bool = True, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                  min_confidence: float = 0.3, landmarker_model: str | None = None,
                  min_face_px: float = DEFAULT_MIN_FACE_PX, display: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  stabilize: bool = True, mask: str | None = None, overwrite: bool = False,
                  stop: errors.StopSignals | None = None, quiet: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Restores faces in every frame of a video file or camera.

    Every decoded frame gives exactly one output frame (frames without a face
    are written unchanged) at the source's own timestamps, with its audio
    copied, so the result stays in sync with the original. Output files appear
    only once complete (a failure leaves no partial file). A file that ends
    before the frame count it declares is reported (log line and the
    "truncation" entry of the result); one with no decodable frame is an error.
    A SIGINT/SIGTERM (`stop`) ends the run between frames: the outputs keep
    the frames done so far, complete and playable.

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
      min_face_px: the smallest face restored (box side, pixels).
      display: show frames in a window (press q to stop).
      max_pixels: refuse frames larger than this (data prep's pixel limit).
      stabilize: average each restored face over time where it does not move
        (`restoration.stabilize`), so it does not flicker.
      mask: for a guided model, the occluder mask image (the frame's size, or
        square on the aligned face).
      overwrite: replace existing outputs (else refused before anything is read).
      stop: the run's SIGINT/SIGTERM request (`errors.StopSignals`), checked
        between warm-up calls and between frames, never inside the model.
      quiet: no progress bar.
      log: where the summary goes.

    Returns:
      {"output", "frames", "frames_expected", "truncation", "stopped_by",
      "fps_source", "fps_processed", "stage_ms", "files"}.

    Raises:
      errors.InvalidInputError: no frame of the file could be decoded (nothing
        is written).
      errors.Interrupted: `stop` came before the first frame was done
        (nothing is written).
    """
    frames.check_model(model, mask)
    if max_frames is not None and max_frames < 1:
        raise errors.InvalidInputError(f"--max_frames={max_frames}: must be at least 1")
    paths = plan_video(input_spec, output, save_masks=save_masks,
                       side_by_side_out=side_by_side_out, display=display, overwrite=overwrite)
    timer = timing.StageTimer()
    smoother = LandmarkSmoother(min_cutoff, beta) if smoothing else None
    stabilizer = TemporalStabilizer(StabilizerOptions()) if stabilize else None
    # Compile / warm up for 1 and 2 faces before timing: the first call of a
    # jitted model includes compilation, which is not the steady frame rate.
    for n in (1, 2):
        if stop is not None and stop.requested:
            raise stop.interrupted(f"during the model warm-up, before any frame of {input_spec}; "
                                   "nothing was written")
        warm = np.zeros((n, model.resolution, model.resolution, 3), np.uint8)
        model(warm, np.zeros(warm.shape[:3] + (1,), np.uint8) if model.guided else None)

    with video_io.VideoReader(input_spec) as reader, \
            FaceAnalyzer(mode="video", num_faces=max_faces, min_confidence=min_confidence,
                         model_path=landmarker_model, min_face_px=min_face_px) as analyzer:
        info = reader.info
        if info.width * info.height > max_pixels:
            raise images.DecodeError(
                images.TOO_LARGE, f"{info.width}x{info.height} = {info.width * info.height} pixels "
                f"per frame > limit {max_pixels}", input_spec)
        audio = input_spec if not video_io.is_camera(input_spec) and info.audio_streams else None
        guide = None if mask is None else frames.GuideMask(mask, (info.height, info.width))
        writers: dict[str, video_io.VideoWriter] = {}
        n_frames, faces_seen, to_ms = 0, 0, timing.MonotonicMs()
        stopped_early = False
        stopped_by = None  # the signal that ended the run early
        start = time.perf_counter()
        ok = False
        bar = progress.bar(total=None if video_io.is_camera(input_spec) else info.frame_count,
                           desc=os.path.basename(input_spec), quiet=quiet or display)
        try:
            for frame in reader.timed_frames():
                if stop is not None and stop.requested:
                    stopped_by = stop.name
                    break
                bar.update()
                if max_frames is not None and frame.index >= max_frames:
                    stopped_early = True
                    break
                ts_ms = to_ms(frame.time_s)
                with timer("detect"):
                    faces = analyzer.detect_video(frame.rgb, ts_ms)
                    lms = [f.landmarks for f in faces]
                    if smoother is not None:
                        lms = smoother(lms, frame.time_s)
                result = frames.restore_frame(frame.rgb, lms, model, stabilizer=stabilizer,
                                              time_s=frame.time_s, guide=guide, timer=timer)
                restored = result.image
                faces_seen += len(lms)
                if not writers:  # opened with the first frame: a file with none leaves nothing
                    _open_video_writers(writers, paths, info, audio, overwrite)
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
        except KeyboardInterrupt:  # callers without `stop`
            stopped_by = "KeyboardInterrupt"
            ok = True  # what was written so far is kept
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
        truncation = None if stopped_early or stopped_by else reader.truncation
        if not n_frames and not stopped_by:
            why = f"decoding error: {reader.decode_error}" if reader.decode_error else \
                "the file is truncated or damaged"
            of = f" of {info.frame_count}" if info.frame_count else ""
            raise errors.InvalidInputError(
                f"{input_spec}: no frame could be decoded (0{of}; {why}); nothing was written")
    if not n_frames and stop is not None and stop.requested:
        raise stop.interrupted(f"before the first frame of {input_spec} was done; nothing was "
                               "written")
    stats = {
        "output": paths.get("out") if n_frames else None,
        "files": [w.path for k, w in writers.items() if k != "out"],
        "frames": n_frames,
        "frames_expected": info.frame_count,
        "truncation": truncation,
        "stopped_by": stopped_by,
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
    if stopped_by:
        log(f"stopped by {stopped_by} after {n_frames} frames"
            + (f": {stats['output']} holds them (complete and playable)" if stats["output"] else ""))
    return stats


def is_video_input(input_spec: str) -> bool:
    """Whether `infer --input` names a camera or a video file (else photos)."""
    return video_io.is_camera(input_spec) or (os.path.isfile(input_spec)
                                              and video_io.is_video_path(input_spec))


def run(model_path: str | None, input_spec: str, output: str | None, *, checkpoint: str | int = "latest",
        report: str | None = None, **kwargs) -> Any:
    """Dispatches to photos or video by the input; returns their report.

    Every output (and `report`, the `--report` file the caller writes) is
    planned and checked first: none may be an input, share a name with
    another or exist without `overwrite`, and their folders must be writable.
    Then the landmark model is found. Only then is the model loaded and an
    input read; nothing is created before that (output folders appear with
    their first file).
    """
    outputs = {k: kwargs.get(k, False) for k in ("save_masks", "side_by_side_out", "overwrite")}
    video = is_video_input(input_spec)
    if video:
        plan_video(input_spec, output, display=kwargs.get("display", False), report=report,
                   **outputs)
    elif output is None:
        raise errors.InvalidInputError("--output is required for photos")
    else:
        plan_photos(input_spec, output, report=report, **outputs)
    kwargs["landmarker_model"] = assets.resolve_model("face_landmarker.task",
                                                      kwargs.get("landmarker_model"))
    stop = kwargs.get("stop")
    if stop is not None and stop.requested:
        raise stop.interrupted("before the model was loaded; nothing was written")
    assets.resolve_model("face_detection_full_range.tflite")  # found before any work, too
    if video:
        return process_video(predictors.open_predictor(model_path, checkpoint), input_spec, output,
                             **kwargs)
    video_only = {k for k in ("max_frames", "smoothing", "min_cutoff", "beta", "display",
                              "stabilize", "mask") if k in kwargs}
    photo_kwargs = {k: v for k, v in kwargs.items() if k not in video_only}
    if kwargs.get("mask"):
        photo_kwargs["masks"] = GuideMasks(kwargs["mask"])
    return process_photos(predictors.open_predictor(model_path, checkpoint), input_spec, output,
                          **photo_kwargs)
