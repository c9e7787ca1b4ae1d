r"""Packages a trained run as a shipped model under pretrained/<name>/.

    python -m launch.ship_model --workdir=runs/reference --name=deocc-128 \
        --data_dir=data/ref128 [--checkpoint=best] [--occluders_dir=../shared/occluders]

Writes, in pretrained/<name>/:
  deocc_model.json, config.json, generator.msgpack   float16 parameters (`deocc_jax.artifacts.loading`):
                                                     what `--config.init_from` fine-tunes from
  export/<step>/                                     the SavedModel (TF Serving, `infer`), float16
                                                     parameters, checked against JAX
  metrics.json, metrics.md                           `deocc_jax.evaluate` on the test split: the
                                                     shipped float16 model, the float32 checkpoint
                                                     it came from (what rounding costs), every
                                                     baseline and the face metrics
  metrics_heldout.*                                  the same on --heldout_data_dir's test split
                                                     (no sample grids: their tiles are dataset
                                                     photos, which may not be redistributed)
  demo.png                                           before | after on a public-domain portrait
The model card (MODEL_CARD.md) is written by hand from these numbers; shipping again over a
folder keeps its card (whose numbers then need updating).
"""

from __future__ import annotations

import json
import os
import shutil

import cv2
from absl import flags

from deocc_jax import errors
from deocc_jax.artifacts import export_lib, loading, predictors
from deocc_jax.evaluation import eval_lib, face_metrics
from deocc_jax.faces import sample_photos
from deocc_jax.restoration import infer_lib
from deocc_jax.io import atomic
from launch import demo_photo

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_NAME = flags.DEFINE_string("name", None, "Model name (folder under pretrained/).", required=True)
_DATA = flags.DEFINE_string("data_dir", None, "Prepared dataset whose test split is reported.",
                            required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", loading.CHECKPOINT_CHOICES)
_OUTPUT = flags.DEFINE_string("pretrained_dir", predictors.PRETRAINED_DIR, "Where models ship.")
_OCCLUDERS = flags.DEFINE_string("occluders_dir", None, "Occluders for the demo picture.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Evaluate on n test examples (spread "
                                     "evenly over the split).")
_HELDOUT = flags.DEFINE_string("heldout_data_dir", None, "A dataset from a source the model never "
                               "saw (e.g. ../shared/data/faces); its test split is reported as "
                               "metrics_heldout.json.")


def ship(workdir: str, name: str, data_dir: str, *, checkpoint: str | int = "best",
         pretrained_dir: str = predictors.PRETRAINED_DIR, occluders_dir: str | None = None,
         max_examples: int | None = None, heldout_data_dir: str | None = None, log=print) -> str:
    """Writes pretrained/<name>/ (see the module docstring); returns its path."""
    model = loading.load_model(workdir, checkpoint)
    out = os.path.join(pretrained_dir, name)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = loading.save_pretrained(tmp, model.config, model.variables, model.step, name=name)
    log(f"{tmp}: {meta['num_params'] / 1e6:.2f} M parameters from {model.description}")
    export_lib.export_model(tmp, os.path.join(tmp, "export"), param_dtype="float16",
                            platforms=("cpu",), log=log)
    with face_metrics.FaceMetrics() as fm:
        eval_lib.evaluate(tmp, data_dir, split="test", compare=[workdir],
                          output=os.path.join(tmp, "metrics.json"), max_examples=max_examples,
                          grid_rows_per_kind=0, face_metrics=fm, log=log)
        if heldout_data_dir:
            eval_lib.evaluate(tmp, heldout_data_dir, split="test",
                              output=os.path.join(tmp, "metrics_heldout.json"),
                              max_examples=max_examples, grid_rows_per_kind=0, face_metrics=fm,
                              log=log)
    for stem in ("metrics", "metrics_heldout"):
        _relative_outputs(os.path.join(tmp, stem + ".json"))
    demo = os.path.join(tmp, "demo_input.png")
    demo_photo.occluded_demo_photo(sample_photos.face_photo_paths()[0], demo, 0, occluders_dir)
    reports = infer_lib.process_photos(predictors.open_predictor(tmp), demo,
                                       os.path.join(tmp, "demo_output"), side_by_side_out=True,
                                       log=log)
    side_by_side = infer_lib.read_rgb(reports[0]["files"][0])
    scale = 256 / side_by_side.shape[0]  # a small picture for the card, not a dataset
    infer_lib.write_rgb(os.path.join(tmp, "demo.png"), cv2.resize(
        side_by_side, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    shutil.rmtree(os.path.join(tmp, "demo_output"))
    os.remove(demo)
    loading.replace_keeping_card(tmp, out, log)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    log(f"shipped {out}: {size / 2**20:.1f} MiB")
    return out


def _relative_outputs(metrics_json: str) -> None:
    """Output paths relative to the shipped folder (they are absolute where evaluate ran)."""
    if not os.path.exists(metrics_json):
        return
    with open(metrics_json) as f:
        metrics = json.load(f)
    metrics["outputs"] = {k: os.path.basename(v) for k, v in metrics["outputs"].items()}
    # Its own file, just written into the staging folder: rewritten on purpose.
    atomic.write_text(metrics_json, json.dumps(metrics, indent=2), overwrite=True)


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    ship(_WORKDIR.value, _NAME.value, _DATA.value,
         checkpoint=loading.parse_checkpoint(_CHECKPOINT.value), pretrained_dir=_OUTPUT.value,
         occluders_dir=_OCCLUDERS.value, max_examples=_MAX_EXAMPLES.value,
         heldout_data_dir=_HELDOUT.value)


if __name__ == "__main__":
    errors.run(main)
