r"""Removes occluders from faces in photos, videos or a live camera.

    python -m deocc_jax.infer --input=photo.jpg --output=out/          # the shipped model
    python -m deocc_jax.infer --model=runs/deocc --input='shots/*.jpg' --output=out/ \
        --save_masks --side_by_side
    python -m deocc_jax.infer --model=exports/deocc --input=clip.mp4 --output=clip_out.mp4
    python -m deocc_jax.infer --model=model.onnx --input=0 --display   # webcam

--model is a training workdir, a pretrained folder, an export folder
(`python -m deocc_jax.export`), an .onnx or a .tflite file; without it the
model shipped in pretrained/ is used. Photos: every face is restored and
blended back; photos without a face are copied unchanged and listed. Video:
same frame count and frame rate as the source; frames per second and
per-stage times are printed.

Existing files are never replaced without --overwrite, and every output name
of a run is checked before anything is written (see `io.atomic`). SIGINT
(Ctrl-C) and SIGTERM stop the run between frames or photos: what was done is
kept (a video stays complete and playable), the report is written, and the
exit status is 130 or 143.
"""

import json
import os

from absl import flags

from deocc_jax import errors

# `python -m deocc_jax.infer` takes SIGINT/SIGTERM before the heavy imports below
# (OpenCV, JAX, MediaPipe: seconds), so that a Ctrl-C while they load stops the run
# at its first safe point; a KeyboardInterrupt raised inside an import can be
# swallowed (OpenCV's loader catches it, prints it and goes on).
_STOP = errors.StopSignals()
if __name__ == "__main__":
    _STOP.install()

from deocc_jax.artifacts import loading
from deocc_jax.restoration import infer_lib, smoothing  # noqa: E402  (after the handlers, on purpose)
from deocc_jax.io import atomic  # noqa: E402
from deocc_jax.faces.cascade import DEFAULT_MIN_FACE_PX

_MODEL = flags.DEFINE_string("model", None, "Workdir, pretrained folder, export folder, .onnx or "
                             ".tflite (default: the shipped model in pretrained/).")
_INPUT = flags.DEFINE_string("input", None, "Photo, folder, glob, video file, or camera index.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output file or folder (optional for a displayed camera).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", f"For workdirs: {loading.CHECKPOINT_CHOICES}.")
_SAVE_MASKS = flags.DEFINE_bool("save_masks", False, "Also write the predicted occlusion masks.")
_SIDE_BY_SIDE = flags.DEFINE_bool("side_by_side", False, "Also write before | after images/videos.")
_MAX_FACES = flags.DEFINE_integer("max_faces", 8, "Most faces handled per photo or frame.")
_MIN_CONF = flags.DEFINE_float("min_confidence", 0.3, "MediaPipe detection confidence threshold.")
_MIN_FACE_PX = flags.DEFINE_float(
    "min_face_px", DEFAULT_MIN_FACE_PX, "Smallest face restored: the face box's longer side in "
    "pixels. Smaller faces are left as they are and named in the photo's line.", lower_bound=0)
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Video/camera: stop after n frames.",
                                    lower_bound=1)
_SMOOTH = flags.DEFINE_bool("smoothing", True, "Video: one-euro smoothing of landmarks.")
_MIN_CUTOFF = flags.DEFINE_float("min_cutoff", smoothing.DEFAULT_MIN_CUTOFF, "One-euro cutoff at rest (Hz); lower = steadier.")
_BETA = flags.DEFINE_float("beta", smoothing.DEFAULT_BETA, "One-euro speed coefficient; higher = less lag.")
_DISPLAY = flags.DEFINE_bool("display", False, "Video/camera: show before | after in a window.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_REPORT = flags.DEFINE_string("report", None, "Write the run's report (JSON) here.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", infer_lib.DEFAULT_MAX_PIXELS,
                                   "Refuse photos (and video frames) with more pixels than this; "
                                   "the same limit as data prep's --max_pixels.", lower_bound=1)
_STABILIZE = flags.DEFINE_bool("stabilize", True, "Video: average each restored face over time "
                               "where it does not move, so it does not flicker.")
_MASK = flags.DEFINE_string("mask", None, "Guided models: the occluder mask (white = occluded): an "
                            "image, or for photos a folder of masks named like them.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files (photos, masks, "
                               "videos, the report); without it they are refused before any work.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    with _STOP as stop:
        report = infer_lib.run(
            _MODEL.value, _INPUT.value, _OUTPUT.value,
            checkpoint=loading.parse_checkpoint(_CHECKPOINT.value), report=_REPORT.value,
            save_masks=_SAVE_MASKS.value, side_by_side_out=_SIDE_BY_SIDE.value,
            max_faces=_MAX_FACES.value, min_confidence=_MIN_CONF.value, max_frames=_MAX_FRAMES.value,
            min_face_px=_MIN_FACE_PX.value,
            smoothing=_SMOOTH.value, min_cutoff=_MIN_CUTOFF.value, beta=_BETA.value,
            display=_DISPLAY.value, landmarker_model=_LANDMARKER.value, max_pixels=_MAX_PIXELS.value,
            stabilize=_STABILIZE.value, mask=_MASK.value, overwrite=_OVERWRITE.value, stop=stop,
            quiet=_QUIET.value)
        if _REPORT.value:
            atomic.write_text(_REPORT.value, json.dumps(report, indent=2), overwrite=_OVERWRITE.value)
    if stop.requested:
        raise stop.interrupted(_kept(report))
    rejected = [r for r in report if r["status"] == "rejected"] if isinstance(report, list) else []
    if rejected and len(rejected) == len(report):
        raise errors.InvalidInputError(
            f"none of the {len(report)} photos could be read, so none was written: "
            + "; ".join(r["error"] for r in rejected[:3]) + (" ..." if len(rejected) > 3 else ""))
    if rejected:  # the others were processed; the exit status still says not all were
        raise errors.InvalidInputError(
            f"{len(rejected)} of {len(report)} photo(s) rejected: "
            + "; ".join(r["error"] for r in rejected[:3]) + (" ..." if len(rejected) > 3 else ""))


def _kept(report) -> str:
    """What an interrupted run kept, in a few words."""
    if isinstance(report, list):
        done = sum(r["status"] != "rejected" for r in report)
        return f"{done} photo(s) done and kept in {_OUTPUT.value}" if done else \
            "before the first photo was done; nothing was written"
    kept = [p for p in [report["output"], *report["files"]] if p]
    if not kept:
        return f"{report['frames']} frames done (no output file was asked for)"
    return f"{report['frames']} frames done, kept in {', '.join(kept)} (complete and playable)"


def run():
    """Console-script entry point (`deocc-infer`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run()
