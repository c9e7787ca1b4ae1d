r"""Where a blind model loses to inpainting: finding the occluder, or painting what is beneath?

    python -m benchmarks.error_sources --model=pretrained/deocc-realtime-128 \
        --data_dir=data/ref128 --split=validation --max_examples=512 \
        --output=benchmarks/results/error_sources_deocc-realtime-128.json

A blind de-occluder does two things that OpenCV's inpainting is spared: it finds the occluder (its
mask head) and it paints the face beneath (its generator). This benchmark swaps each part for the
true answer, per occluder category, on one split:

  model                   the model as it ships: its own mask, its own fill
  model_fill+true_mask    its fill composited with the true mask: a perfect mask head
  telea+model_mask        OpenCV Telea given the model's mask (> 0.5): what the mask alone is worth
                          to a painter that is not learnt
  opencv_telea, opencv_ns given the true mask (evaluate's baselines)

Where `model_fill+true_mask` is still below the baselines, a better mask head cannot close the
gap: the generator's fill is what loses. Where it is above and `model` is below, the mask is.
The JSON has every metric per method and category (`eval_lib.aggregate`); a Markdown table of
occluded-region and whole-image PSNR is written beside it.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from absl import flags

from benchmarks import common
from deocc_jax import errors, models
from deocc_jax.artifacts import loading
from deocc_jax.evaluation import baselines, eval_lib
from deocc_jax.training import sharding
from deocc_jax.data import features, input_pipeline

_MODEL = flags.DEFINE_string("model", "pretrained/deocc-realtime-128",
                             "A blind model: pretrained folder or workdir.")
_DATA = flags.DEFINE_string("data_dir", None, "Prepared data set (`python -m data_prep.build`).")
_SPLIT = flags.DEFINE_string("split", "validation", "Split to measure on (tune on validation, "
                             "report on test).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 512, "Examples spread evenly over the split.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch.")
_OUTPUT = flags.DEFINE_string("output", None, "Result JSON (a .md table is written beside it).")
flags.mark_flags_as_required(["data_dir"])

MODEL_FILL = "model_fill+true_mask"
TELEA_MODEL_MASK = "telea+model_mask"


def _fill_with_true_mask(config, variables, occluded_uint8, mask_uint8):
    """The generator's raw fill, composited with the true mask instead of its own."""
    occluded = models.to_model_range(occluded_uint8)
    out, _ = models.generate(config, models.build_generator(config), variables, occluded, None)
    mask = models.mask_to_unit(mask_uint8)
    return {"deoccluded": models.to_uint8(mask * out["raw"] + (1.0 - mask) * occluded)}


def methods(model: loading.LoadedModel, mesh) -> list[eval_lib.Method]:
    """The model, its fill with the true mask, Telea with its mask, and evaluate's baselines."""
    config, variables = model.config, jax.device_put(model.variables, sharding.replicated(mesh))
    shipped = eval_lib.jax_model_method("model", config, variables, mesh,
                                        description=model.description)

    fill_fn = jax.jit(functools.partial(_fill_with_true_mask, config))

    def fill(batch, local):
        del local
        return fill_fn(variables, batch["occluded"], batch["mask"])

    def telea_model_mask(batch, local):
        predicted = sharding.local_rows(shipped.fn(batch, local)["mask"])
        hard = (predicted > 0.5).astype(np.uint8) * 255
        return {"deoccluded": baselines.opencv_telea(local["occluded"], hard)}

    return [shipped,
            eval_lib.Method(MODEL_FILL, "the model's fill inside the true mask", fill),
            eval_lib.Method(TELEA_MODEL_MASK, "cv2.inpaint TELEA with the model's mask (> 0.5)",
                            telea_model_mask)] + [
        m for m in eval_lib.baseline_methods() if m.name != "occluded_input"]


def markdown(result: dict) -> str:
    names = list(result["methods"])
    lines = [f"### Where `{result['model']}` loses: {result['split']} split, "
             f"{result['num_examples']} examples", "",
             "Occluded-region PSNR (dB) per category; the last row is whole-image PSNR.", "",
             "| category (n) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for cat, n in result["categories"].items():
        lines.append(f"| {cat} ({n}) | " + " | ".join(
            f"{result['methods'][m]['per_category'][cat]['masked_psnr']:.2f}" for m in names) + " |")
    for key, label in (("masked_psnr", "**all**"), ("psnr", "**all, whole image**")):
        lines.append(f"| {label} | " + " | ".join(
            f"{result['methods'][m]['overall'][key]:.2f}" for m in names) + " |")
    return "\n".join(lines) + "\n"


def run(model_path: str, data_dir: str, split: str, max_examples: int | None,
        batch_size: int, log=print) -> dict:
    mesh = sharding.make_mesh()
    model = loading.load_model(model_path)
    if not models.predicts_mask(model.config):
        raise errors.InvalidInputError(f"{model_path}: a guided model has no mask head to measure")
    info = features.read_dataset_info(data_dir)
    eval_lib.check_resolution(model_path, model.config.resolution, int(info["resolution"]))
    num = min(input_pipeline.split_size(data_dir, split), max_examples or np.inf)
    batches = input_pipeline.make_eval_iterator(
        data_dir, split, eval_lib.eval_batch_size(batch_size, mesh), num_examples=num)
    found = eval_lib.Evaluator(mesh, log=log).run(batches, methods(model, mesh), total=num)
    cats = [str(c) for c in found.categories]
    return {
        "model": model_path, "step": model.step, "split": split, "num_examples": len(cats),
        "data": common.dataset_summary(info, data_dir),
        "categories": eval_lib.category_counts(cats),
        "methods": {name: eval_lib.aggregate(per_image, cats)
                    for name, per_image in found.per_image.items()},
        "machine": common.machine_info(), "code": common.code_state(),
    }


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    result = run(_MODEL.value, _DATA.value, _SPLIT.value, _MAX_EXAMPLES.value, _BATCH.value)
    table = markdown(result)
    print(table)
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, result)
        with open(os.path.splitext(_OUTPUT.value)[0] + ".md", "w") as f:
            f.write(table)


if __name__ == "__main__":
    errors.run(main)
