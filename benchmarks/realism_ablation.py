"""`python -m benchmarks.realism_ablation --metrics=runs/eval/metrics.json --output=benchmarks/results/realism_ablation.json`:
the realism ablation table (benchmarks/realism_ablation_lib.py) from one `deocc_jax.evaluate`
run that scored every arm (`--model` and `--compare`) on the same examples; writes the JSON and
a Markdown table beside it."""

import json

from absl import flags

from benchmarks import common, realism_ablation_lib
from deocc_jax import errors
from deocc_jax.io import atomic

_METRICS = flags.DEFINE_string("metrics", None, "metrics.json of an evaluate run with several models.",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Result JSON (.md written beside it).", required=True)


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    try:
        with open(_METRICS.value) as f:
            metrics = json.load(f)
    except FileNotFoundError:
        raise errors.InputNotFoundError(f"{_METRICS.value}: no such metrics file") from None
    except json.JSONDecodeError as e:
        raise errors.InvalidInputError(f"{_METRICS.value}: not JSON ({e})") from None
    try:
        table = realism_ablation_lib.build(metrics)
    except (KeyError, ValueError) as e:
        raise errors.InvalidInputError(f"{_METRICS.value}: not an evaluate metrics file ({e})") from None
    common.write_json(_OUTPUT.value, table)
    md = realism_ablation_lib.markdown(table)
    print(md)
    atomic.write_text(_OUTPUT.value.removesuffix(".json") + ".md", md, overwrite=True)


if __name__ == "__main__":
    errors.run(main)
