r"""Exports a trained model for serving: SavedModel (TF Serving), ONNX, LiteRT.

    python -m deocc_jax.export --model=pretrained/deocc-realtime-128 --output_dir=exports/deocc \
        [--format=saved_model,onnx,tflite] [--quantize=none,float16,dynamic_int8] \
        [--data_dir=DATA] [--checkpoint=best] [--check_images='photos/*.jpg']

--model is a training workdir or a pretrained folder. Writes
`output_dir/<step>/` (the SavedModel: saved_model.pb, variables/,
assets.extra/deocc_export.json), `output_dir/deocc-<step>.onnx` and
`output_dir/deocc-<step>[.<quantize>].tflite`. Before reporting an export it
reloads it in its own runtime and compares it with the JAX model on real,
aligned face photos (batch sizes 1 and 3): float32 exports within
`exporters.check.TOLERANCE` (1 grey level); quantised LiteRT variants record
their measured difference and their masked-PSNR change on --data_dir's test
split in their metadata.

Existing exports are replaced only with --overwrite; an --output_dir that is a
file or cannot be written is refused before the model loads. SIGINT and
SIGTERM stop between exports (the ones published stay; the one being built
leaves nothing) and exit 130 or 143.
"""

import os

from absl import flags

from deocc_jax import errors

# As in `infer`: SIGINT/SIGTERM are taken before the heavy imports below, so that a
# signal while they load stops the export at its first safe point.
_STOP = errors.StopSignals()
if __name__ == "__main__":
    _STOP.install()

from deocc_jax.artifacts import export_lib, loading
from deocc_jax.restoration import infer_lib  # noqa: E402  (after the handlers, on purpose)

_MODEL = flags.DEFINE_string("model", None, "Training workdir or pretrained folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Same as --model (a training workdir).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Model base path (TF Serving --model_base_path).",
                              required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", f"For workdirs: {loading.CHECKPOINT_CHOICES}.")
_CHECK_IMAGES = flags.DEFINE_multi_string(
    "check_images", [], "Real photos (files or globs) for the self-check; default: the sample "
    "portraits shipped with scikit-image and matplotlib.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing export of the same step.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms to lower the model for.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_FORMAT = flags.DEFINE_list("format", ["saved_model"], "Any of saved_model, onnx, tflite.")
_QUANTIZE = flags.DEFINE_list("quantize", ["none"], "LiteRT variants: any of none (float32), "
                              "float16, dynamic_int8.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared dataset whose test split measures the "
                                "quantised variants' masked PSNR (default: the run's data_dir).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "float16"],
                                 "Storage type of the parameters (float16: half the size).")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    model = _MODEL.value or _WORKDIR.value
    if not model or (_MODEL.value and _WORKDIR.value):
        raise errors.InvalidInputError("give exactly one of --model or --workdir")
    images = [p for spec in _CHECK_IMAGES.value for p in infer_lib.collect_images(spec)] or None
    with _STOP as stop:
        meta = export_lib.export_model(
            model, _OUTPUT.value, checkpoint=loading.parse_checkpoint(_CHECKPOINT.value),
            check_images=images, overwrite=_OVERWRITE.value, landmarker_model=_LANDMARKER.value,
            platforms=tuple(_PLATFORMS.value), param_dtype=_PARAM_DTYPE.value,
            formats=tuple(_FORMAT.value), quantize=tuple(_QUANTIZE.value), data_dir=_DATA_DIR.value,
            stop=stop)
    for name, export in meta["exports"].items():
        print(f"exported {name}: {os.path.abspath(export['path'])}")
    if "saved_model" in meta["exports"]:
        print(export_lib.serving_help(_OUTPUT.value, meta["resolution"], meta["guided"]))


def run():
    """Console-script entry point (`deocc-export`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run()
