"""`python -m benchmarks.sheet --input=photos/ --output=sheet.png`: a restoration sheet, one row
per face (aligned input | model output | predicted mask | photo | pasted back), made with
`infer`'s own pipeline, for a person to look at (benchmarks/sheet_lib.py says how)."""

from absl import flags

from benchmarks import sheet_lib
from deocc_jax import errors

_INPUT = flags.DEFINE_string("input", None, "Photo, folder or glob of photos.", required=True)
_MODEL = flags.DEFINE_string("model", None, "Workdir, pretrained folder, export folder, .onnx or "
                             ".tflite (default: the shipped model in pretrained/).")
_OUTPUT = flags.DEFINE_string("output", None, "The sheet (.png).", required=True)
_MAX_PHOTOS = flags.DEFINE_integer("max_photos", 24, "Most photos on the sheet.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Picks the photos when there are more than --max_photos.")
_LANDMARKER = flags.DEFINE_string("landmarker_model", None, "Path of face_landmarker.task.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    sheet_lib.run(_MODEL.value, _INPUT.value, _OUTPUT.value, max_photos=_MAX_PHOTOS.value,
                  seed=_SEED.value, overwrite=_OVERWRITE.value, landmarker_model=_LANDMARKER.value)


if __name__ == "__main__":
    errors.run(main)
