r"""Evaluates a trained model against baselines on a prepared split.

    python -m deocc_jax.evaluate --model=runs/deocc --data_dir=data/faces128 \
        --split=test --output=runs/deocc/eval/metrics.json [--checkpoint=best] \
        [--compare=runs/unet_l1 --compare=pretrained/deocc-realtime-128] [--face_metrics] \
        [--framing=tight]

--model (and each --compare) is a training workdir, a pretrained folder or an
export (SavedModel folder, .onnx, .tflite). Writes metrics.json, metrics.md
(Markdown tables) and metrics_samples.png (occluded | each method | clean,
best / median / worst examples); existing ones are refused unless --overwrite.
Runs on all visible devices, whatever device count wrote the checkpoint.
--framing=tight scores every method on tight re-crops of the faces, as a face
photo cut close to the face reaches the model (`evaluation.framing`).
"""

import contextlib
import os

from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import loading
from deocc_jax.evaluation import eval_lib, face_metrics, framing

_MODEL = flags.DEFINE_string("model", None, "Model to evaluate: a workdir, pretrained folder or export.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Same as --model (a training workdir).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", f"For workdirs: {loading.CHECKPOINT_CHOICES}.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared dataset (python -m data_prep.build).",
                                required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_OUTPUT = flags.DEFINE_string("output", "metrics.json",
                              "metrics JSON path; .md and _samples.png are written beside it.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing --output files (else refused "
                               "before anything is evaluated).")
_COMPARE = flags.DEFINE_multi_string("compare", [], "Other models to evaluate on the same examples.")
_BASELINES = flags.DEFINE_bool("baselines", True, "Include occluded-input and OpenCV baselines.")
_FACE_METRICS = flags.DEFINE_bool("face_metrics", True,
                                  "Expression, landmark and identity metrics (MediaPipe; identity "
                                  "needs requirements-eval.txt).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global eval batch (rounded up to the device count).")
_MAX = flags.DEFINE_integer("max_examples", None, "Only n examples, spread evenly over the split.")
_FRAMING = flags.DEFINE_enum("framing", framing.TEMPLATE, list(framing.FRAMINGS),
                              "template: the dataset's aligned crops; tight: each crop cut to a "
                              "tight face box (UTKFace's framing) and filled around it as infer "
                              "fills a tight photo, for every method alike.")
_GRID_ROWS = flags.DEFINE_integer("grid_rows", 2, "Best, median and worst examples in the grid "
                                  "(0: no grid).")


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    if _MODEL.value and _WORKDIR.value:
        raise errors.InvalidInputError("give --model or --workdir, not both")
    with contextlib.ExitStack() as stack:
        fm = stack.enter_context(face_metrics.FaceMetrics()) if _FACE_METRICS.value else None
        result = eval_lib.evaluate(
            _MODEL.value or _WORKDIR.value, _DATA_DIR.value, split=_SPLIT.value,
            checkpoint=loading.parse_checkpoint(_CHECKPOINT.value), compare=_COMPARE.value,
            include_baselines=_BASELINES.value, batch_size=_BATCH.value, max_examples=_MAX.value,
            output=_OUTPUT.value, grid_rows_per_kind=_GRID_ROWS.value, face_metrics=fm,
            overwrite=_OVERWRITE.value, framing=_FRAMING.value)
    with open(result["outputs"]["markdown"]) as f:
        print(f.read())
    for kind, path in result["outputs"].items():
        print(f"{kind}: {path}")


def run():
    """Console-script entry point (`deocc-eval`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run()
