"""`python -m benchmarks.harm --output=benchmarks/results/harm.json`: what a model does to faces
with nothing over them, and what the harm gate buys (benchmarks/harm_lib.py says how)."""

import os

from absl import flags

from benchmarks import common, harm_lib
from deocc_jax import errors

_SHARED = os.environ.get("DEOCC_SHARED", os.path.join(common.REPO, "..", "shared"))
_MODEL = flags.DEFINE_string("model", None, "Model (default: the shipped one).")
_FACES = flags.DEFINE_string("faces", os.path.join(_SHARED, "data", "faces"), "Face photos.")
_OCCLUDERS = flags.DEFINE_string("occluders_dir", os.path.join(_SHARED, "occluders"),
                                 "Occluder images for data_prep's generator.")
_NUM = flags.DEFINE_integer("num_faces", 200, "Photos, spread evenly over the folder.")
_VARIANTS = flags.DEFINE_integer("variants", 2, "Occluded versions of each face.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the occluded versions.")
_MAX_SKIPPED = flags.DEFINE_float("max_skipped", 0.01,
                                  "Largest share of occluded faces the chosen gate may skip.")
_OUTPUT = flags.DEFINE_string("output", None, "Result JSON.")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    result = harm_lib.run(_MODEL.value, _FACES.value, _OCCLUDERS.value or None, _NUM.value,
                          _VARIANTS.value, _SEED.value, _MAX_SKIPPED.value)
    for name, row in result["before_after"].items():
        print(f"{name}: {row}")
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, result)


if __name__ == "__main__":
    errors.run(main)
