r"""Exports a trained checkpoint as a TensorFlow SavedModel for TF Serving.

    python -m deocc_jax.export --workdir=runs/deocc --output_dir=exports/deocc \
        [--checkpoint=best] [--check_images='photos/*.jpg']

Writes `output_dir/<step>/` (saved_model.pb, variables/, assets.extra/
deocc_export.json). Before reporting success it reloads the SavedModel in
TensorFlow and compares it with the JAX model on real, aligned face photos
(batch sizes 1 and 3) within `export_lib.TOLERANCE`.
"""

import os

from absl import app, flags

from deocc_jax import export_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_OUTPUT = flags.DEFINE_string("output_dir", None, "Model base path (TF Serving --model_base_path).",
                              required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
_CHECK_IMAGES = flags.DEFINE_multi_string(
    "check_images", [], "Real photos (files or globs) for the self-check; default: the sample "
    "portraits shipped with scikit-image and matplotlib.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export of the same step.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower the model for.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")


def main(argv):
    del argv
    from deocc_jax import infer_lib
    images = [p for spec in _CHECK_IMAGES.value for p in infer_lib.collect_images(spec)] or None
    checkpoint = int(_CHECKPOINT.value) if _CHECKPOINT.value.isdigit() else _CHECKPOINT.value
    meta = export_lib.export_workdir(
        _WORKDIR.value, _OUTPUT.value, checkpoint=checkpoint, check_images=images,
        overwrite=_OVERWRITE.value, landmarker_model=_LANDMARKER.value,
        platforms=tuple(_PLATFORMS.value))
    print(f"exported {os.path.join(os.path.abspath(_OUTPUT.value), str(meta['step']))}")
    print(export_lib.serving_help(_OUTPUT.value, meta["resolution"], meta["guided"]))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
