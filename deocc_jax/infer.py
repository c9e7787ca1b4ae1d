r"""Removes occluders from faces in photos, videos or a live camera.

    python -m deocc_jax.infer --model=exports/deocc --input=photos/ --output=out/
    python -m deocc_jax.infer --model=runs/deocc --input='shots/*.jpg' --output=out/ \
        --save_masks --side_by_side
    python -m deocc_jax.infer --model=exports/deocc --input=clip.mp4 --output=clip_out.mp4
    python -m deocc_jax.infer --model=exports/deocc --input=0 --display   # webcam

--model is an export folder (`python -m deocc_jax.export`) or a training
workdir. Photos: every face is restored and blended back; photos without a
face are copied unchanged and listed. Video: same frame count and frame rate
as the source; frames per second and per-stage times are printed.
"""

import json
import os

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "Export folder or training workdir.", required=True)
_INPUT = flags.DEFINE_string("input", None, "Photo, folder, glob, video file, or camera index.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output file or folder (optional for a displayed camera).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "For a workdir: 'latest', 'best' or a step.")
_SAVE_MASKS = flags.DEFINE_bool("save_masks", False, "Also write the predicted occlusion masks.")
_SIDE_BY_SIDE = flags.DEFINE_bool("side_by_side", False, "Also write before | after images/videos.")
_MAX_FACES = flags.DEFINE_integer("max_faces", 8, "Most faces handled per photo or frame.")
_MIN_CONF = flags.DEFINE_float("min_confidence", 0.3, "MediaPipe detection confidence threshold.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Video/camera: stop after n frames.")
_SMOOTH = flags.DEFINE_bool("smoothing", True, "Video: one-euro smoothing of landmarks.")
_MIN_CUTOFF = flags.DEFINE_float("min_cutoff", 1.0, "One-euro cutoff at rest (Hz); lower = steadier.")
_BETA = flags.DEFINE_float("beta", 1.0, "One-euro speed coefficient; higher = less lag.")
_DISPLAY = flags.DEFINE_bool("display", False, "Video/camera: show before | after in a window.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_REPORT = flags.DEFINE_string("report", None, "Write the run's report (JSON) here.")


def main(argv):
    del argv
    from deocc_jax import infer_lib
    checkpoint = int(_CHECKPOINT.value) if _CHECKPOINT.value.isdigit() else _CHECKPOINT.value
    report = infer_lib.run(
        _MODEL.value, _INPUT.value, _OUTPUT.value, checkpoint=checkpoint,
        save_masks=_SAVE_MASKS.value, side_by_side_out=_SIDE_BY_SIDE.value,
        max_faces=_MAX_FACES.value, min_confidence=_MIN_CONF.value, max_frames=_MAX_FRAMES.value,
        smoothing=_SMOOTH.value, min_cutoff=_MIN_CUTOFF.value, beta=_BETA.value,
        display=_DISPLAY.value, landmarker_model=_LANDMARKER.value)
    if _REPORT.value:
        with open(_REPORT.value, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
