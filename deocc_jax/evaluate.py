r"""Evaluates a trained checkpoint against baselines on a prepared split.

    python -m deocc_jax.evaluate --workdir=runs/deocc --data_dir=data/faces256 \
        --split=test --output=runs/deocc/eval/metrics.json [--checkpoint=best] \
        [--compare=runs/unet_l1 --compare=runs/pix2pix]

Writes metrics.json, metrics.md (Markdown tables) and metrics_samples.png
(occluded | each method | clean, best / median / worst examples). Runs on all
visible devices, whatever device count wrote the checkpoint.
"""

from absl import app, flags

from deocc_jax import eval_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir of the model to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step number.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared dataset (python -m data_prep.build).",
                                required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_OUTPUT = flags.DEFINE_string("output", "metrics.json",
                              "metrics JSON path; .md and _samples.png are written beside it.")
_COMPARE = flags.DEFINE_multi_string("compare", [], "Other workdirs to evaluate on the same examples.")
_BASELINES = flags.DEFINE_bool("baselines", True, "Include occluded-input and OpenCV baselines.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global eval batch (rounded up to the device count).")
_MAX = flags.DEFINE_integer("max_examples", None, "Only the first n examples of the split.")
_GRID_ROWS = flags.DEFINE_integer("grid_rows", 2, "Best, median and worst examples in the grid.")


def _checkpoint(value: str):
    return int(value) if value.isdigit() else value


def main(argv):
    del argv
    result = eval_lib.evaluate(
        _WORKDIR.value, _DATA_DIR.value, split=_SPLIT.value, checkpoint=_checkpoint(_CHECKPOINT.value),
        compare=_COMPARE.value, include_baselines=_BASELINES.value, batch_size=_BATCH.value,
        max_examples=_MAX.value, output=_OUTPUT.value, grid_rows_per_kind=_GRID_ROWS.value)
    with open(result["outputs"]["markdown"]) as f:
        print(f.read())
    for kind, path in result["outputs"].items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    app.run(main)
