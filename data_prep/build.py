r"""Builds a deocc training set: `python -m data_prep.build --input=... --output_dir=...`.

Face photos in, occluded/clean pairs out (TFRecord + ArrayRecord shards,
dataset_info.json, rejected.tsv, contact_sheet.png). Runs on Beam's
DirectRunner (all cores) by default; any other Beam flag (--runner,
--direct_num_workers, Dataflow's --project/--region/--temp_location, ...) is
passed to Beam unchanged.

Safety (local output folders):
  * flags are checked before any photo is read; a mistake is one line, exit 2;
  * the dataset is written into a hidden sibling folder
    (`.NAME.building-XXXX`, marked by `_BUILDING.json`) and renamed into place
    only when complete, so `--overwrite` replaces an old dataset only by a
    finished new one, and a killed build leaves the old one untouched (its
    leftovers are recognised, and removed by the next build);
  * a lock (`.NAME.lock`, held with flock for the build's lifetime, released
    by the kernel if the process dies) makes a second build into the same
    folder refuse with a message naming the first.

Example (see data_prep/README.md for the reference data set):
  python -m data_prep.build --input=../shared/data/faces --output_dir=/tmp/deocc_data \
      --resolution=128 --variants_per_face=4 --occluders_dir=../shared/occluders
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

from absl import flags

from data_prep import build_lib, pipeline, prep_flags
from deocc_jax import errors

_PREP = prep_flags.define_prep_flags()
_OUT = prep_flags.define_output_flags()
flags.adopt_module_key_flags(prep_flags)  # --help lists them as this binary's own


def main(argv: Sequence[str]) -> None:
    if not _PREP.input.value or not _OUT.output_dir.value:
        raise errors.InvalidInputError("--input and --output_dir are required")
    info = build_lib.build_dataset(
        _PREP.input.value, _OUT.output_dir.value, pipeline_args=argv[1:],
        num_shards=_OUT.num_shards.value, manual_dir=_OUT.manual_dir.value,
        tfds_data_dir=_OUT.tfds_data_dir.value, overwrite=_OUT.overwrite.value,
        **{name: h.value for name, h in _PREP.config.items()})
    print(json.dumps({k: info[k] for k in ("num_records", "images", "categories", "occluder_kinds",
                                           "groups")}, indent=2))
    print("rejected:", {k: v for k, v in info["rejected"].items() if v})
    print(f"splits: { {k: v['num_records'] for k, v in info['splits'].items()} }; "
          f"contact sheet: {os.path.join(_OUT.output_dir.value, pipeline.CONTACT_SHEET)}")


def _parse_flags(argv: list[str]) -> list[str]:
    # Flags absl does not know (--runner, --project, ...) are Beam's: keep them.
    return flags.FLAGS(argv, known_only=True)


def run() -> None:
    """Console-script entry point (`deocc-prep`)."""
    logging.getLogger().setLevel(logging.INFO)
    errors.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
