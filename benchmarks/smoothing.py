"""`python -m benchmarks.smoothing`: the one-euro speed coefficient (`--beta` of infer and live)
against the two things it trades: harm on bare faces while the camera moves, and flicker.

For each beta of `--betas`, in one run with one model:
- video harm (`video_harm_lib`, clips with the photo's aspect kept so that no face is distorted):
  the share of frames with at most 1 % of face pixels changed, through infer and live. A smoother
  that lags leaves the crop behind a moving face; the model sees a misaligned face and paints it.
- flicker and masked PSNR (`streaming.flicker`) per motion on the public-domain portraits, with
  infer's tracker (MediaPipe video mode) and live's (flow between keyframes), both stabilised as
  shipped, beside the unsmoothed per-frame baseline. A smoother that does not smooth flickers.
"""

import os

from absl import flags

from benchmarks import common, video_harm_lib
from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.faces import sample_photos
from deocc_jax.restoration.stabilize import StabilizerOptions
from deocc_jax.streaming.flicker import measure_flicker, standard_clips
from deocc_jax.streaming.tracking import TrackerOptions

_MODEL = flags.DEFINE_string("model", None, "Model (default: the shipped one).")
_BETAS = flags.DEFINE_list("betas", ["1", "30", "100"], "One-euro speed coefficients compared.")
_FACES = flags.DEFINE_string("faces", common.DEFAULT_PHOTOS, "Face photo folder (video harm).")
_PHOTOS = flags.DEFINE_integer("photos", 4, "Video-harm photos, spread over --faces.")
_FRAMES = flags.DEFINE_integer("frames", video_harm_lib.FRAMES, "Frames per video-harm clip.")
_FLICKER_FRAMES = flags.DEFINE_integer("flicker_frames", 48, "Frames per flicker clip.")
# The flicker benchmark's motions plus a pan as fast as the video-harm clip's (up to 10 px a frame).
MOTIONS = {"still": 0.0, "slow": 0.01, "moving": 0.03, "fast": 0.1}
_SCRATCH = flags.DEFINE_string("scratch_dir", "/tmp/deocc_smoothing", "Clips and outputs (not the "
                               "repository: the photos may not be redistributed).")
_OUTPUT = flags.DEFINE_string("output", os.path.join(common.REPO, "benchmarks", "results",
                                                     "smoothing.json"), "Result JSON.")


def _flicker_row(entry: dict) -> dict:
    keep = ("flicker", "masked_psnr")
    return {**{k: round(entry[k], 3) for k in keep},
            "by_motion": {m: {k: round(v[k], 3) for k in keep} for m, v in entry["by_motion"].items()}}


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    try:
        betas = [float(b) for b in _BETAS.value]
    except ValueError:
        raise errors.InvalidInputError(f"--betas={','.join(_BETAS.value)}: not numbers") from None
    model = predictors.open_predictor(_MODEL.value)
    photos = video_harm_lib.default_photos(_FACES.value, _PHOTOS.value)
    clips = standard_clips(sample_photos.face_photo_paths(), frames=_FLICKER_FRAMES.value,
                           size=(320, 240), motions=MOTIONS)
    stab = StabilizerOptions()
    variants = {"per_frame": (TrackerOptions(method="mediapipe", smoothing=False), None)}
    for b in betas:
        variants[f"infer_beta{b:g}"] = (TrackerOptions(method="mediapipe", beta=b), stab)
        variants[f"live_beta{b:g}"] = (TrackerOptions(beta=b), stab)
    flick = measure_flicker(model, clips, variants)
    rows = []
    for b in betas:
        harm = video_harm_lib.run([("model", model)], photos, os.path.join(_SCRATCH.value, f"b{b:g}"),
                                  video_harm_lib.Settings(frames=_FRAMES.value, aspect="keep",
                                                          beta=b), log=lambda s: None)
        for path in video_harm_lib.PATHS:
            overall = harm["models"][0]["paths"][path]["overall"]
            row = {"beta": b, "path": path,
                   "video_frames_at_most_1pct": overall["frames_at_most_1pct"],
                   "video_face_changed_mean": overall["face_changed_mean"],
                   **_flicker_row(flick["variants"][f"{path}_beta{b:g}"])}
            rows.append(row)
            print(f"beta {b:g} {path}: video frames <= 1 % changed {row['video_frames_at_most_1pct']}, "
                  f"flicker {row['flicker']} (still {row['by_motion']['still']['flicker']}, fast "
                  f"{row['by_motion']['fast']['flicker']}), masked PSNR {row['masked_psnr']}")
    record = {"model": model.description, "video_clips": {"photos": photos, "aspect": "keep",
                                                          "frames": _FRAMES.value},
              "flicker_clips": {"photos": sample_photos.face_photo_paths(), "motions": MOTIONS,
                                "frames": _FLICKER_FRAMES.value, "size": [320, 240]},
              "per_frame": _flicker_row(flick["variants"]["per_frame"]), "rows": rows,
              "machine": common.machine_info(), "code": common.code_state()}
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, record)
        print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    errors.run(main)
