"""`python -m benchmarks.flicker --model=... [--json=out.json]`: flicker and landmark tracking on
clips made from real photos (`deocc_jax.streaming.flicker` measures; this binary prints and saves)."""

import json

from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import predictors
from deocc_jax.faces import sample_photos
from deocc_jax.io import atomic
from deocc_jax.streaming.flicker import measure_flicker, measure_tracking, standard_clips

_MODEL = flags.DEFINE_string("model", None, "Model (default: the shipped model).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "For a workdir: latest, best or a step.")
_PHOTOS = flags.DEFINE_list("photos", None, "Face photos (default: the embedded public-domain ones).")
_FRAMES = flags.DEFINE_integer("frames", 48, "Frames per clip.")
_WIDTH = flags.DEFINE_integer("width", 320, "Frame width.")
_HEIGHT = flags.DEFINE_integer("height", 240, "Frame height.")
_TRACKING = flags.DEFINE_bool("tracking", True, "Also compare landmark trackers.")
_TRACKING_ONLY = flags.DEFINE_bool("tracking_only", False,
                                   "Only compare landmark trackers (no model).")
_JSON = flags.DEFINE_string("json", None, "Also write the result here.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --json file (else refused).")


def main(argv) -> None:
    del argv
    if _JSON.value:  # before minutes of measuring
        atomic.refuse_existing(_JSON.value, overwrite=_OVERWRITE.value, flag="--json")
    photos = _PHOTOS.value or sample_photos.face_photo_paths()
    clips = standard_clips(photos, frames=_FRAMES.value, size=(_WIDTH.value, _HEIGHT.value))
    result: dict = {}
    if _MODEL.value or not _TRACKING_ONLY.value:
        model = predictors.open_predictor(_MODEL.value, _CHECKPOINT.value)
        result["flicker"] = measure_flicker(model, clips)
        result["model"] = model.description
    if _TRACKING.value:
        result["tracking"] = measure_tracking(clips)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if _JSON.value:
        atomic.write_text(_JSON.value, text, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
    errors.run(main)
