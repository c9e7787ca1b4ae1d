r"""Which photos would data prep accept, and why not: `python -m data_prep.audit --input=...`.

Runs the pipeline's first stage (`pipeline.AlignFacesFn`: decode, landmarks,
context and plausibility checks) on every photo and writes nothing, then
prints, per input folder, how many photos become faces and why the others do
not, with the accept rate at other `--max_padding` values and the padding and
head-pose distributions: what is needed to choose the prep flags from data
without building a dataset. Same flags as `data_prep.build` where they apply.

Example (the measurement behind PrepConfig.max_padding's default):
  python -m data_prep.audit --input=../shared/data/lfw,../shared/data/utkface \
      --resolution=128 --workers=2
"""

import json
import sys
from typing import Sequence

from absl import flags

from data_prep import audit_lib, prep_flags
from deocc_jax import errors

# The same flags as data_prep.build (this binary reads the ones that make a PrepConfig).
_PREP = prep_flags.define_prep_flags()
prep_flags.define_output_flags()
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes (each loads its own landmarker).")


def main(argv: Sequence[str]) -> None:
    if not _PREP.input.value:
        raise errors.InvalidInputError("--input is required")
    del argv
    config = _PREP.make_config()
    inputs = [i.strip() for i in _PREP.input.value.split(",") if i.strip()]
    if _WORKERS.value < 1:
        raise errors.InvalidInputError(f"--workers: must be >= 1, got {_WORKERS.value}")
    json.dump(audit_lib.audit(inputs, config, _WORKERS.value), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    errors.run(main)
