r"""deocc end to end in one command, offline, on a laptop CPU.

    python -m launch.quickstart                     # embedded sample photos, 3-5 min on 2 cores
    python -m launch.quickstart --input=../shared/data/faces --occluders_dir=../shared/occluders
    python -m launch.quickstart --budget=ci         # a couple of minutes; what CI runs

Steps: prepare a small dataset (face photos -> aligned, occluded/clean pairs),
train the tiny model, evaluate it against the baselines, export a SavedModel,
and restore a real photo with an occluder drawn on it. Every output lands
under --output_dir and is listed at the end.

Without --input the photos are the two portraits that ship inside installed
packages (scikit-image's astronaut, matplotlib's Grace Hopper), turned into a
few dozen photos by mirroring, rotating and rescaling. A model trained on
them is a demonstration of the pipeline, not a useful de-occluder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable

from absl import flags

from deocc_jax import errors
from deocc_jax.io import atomic
from launch import demo_photo

_INPUT = flags.DEFINE_string("input", None, "Folder or glob of face photos (default: the embedded "
                             "sample portraits).")
_OCCLUDERS = flags.DEFINE_string("occluders_dir", None, "RGBA occluder folder such as "
                                 "../shared/occluders (default: procedural occluders only).")
_OUTPUT = flags.DEFINE_string("output_dir", "deocc_quickstart", "Where everything is written.")
_BUDGET = flags.DEFINE_enum("budget", "default", ["default", "ci"],
                            "default: 3-5 min on 2 CPU cores; ci: about a minute.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps (overrides the budget's).")
_MAX_PHOTOS = flags.DEFINE_integer("max_photos", None, "Use at most this many --input photos.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds data preparation and training.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete an existing --output_dir first.")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each step does."""
    resolution: int
    steps: int
    batch_size: int
    variants_per_face: int
    max_photos: int           # cap on --input photos
    augment_copies: bool      # mirrored/rotated/scaled copies of the embedded photos


BUDGETS = {
    "default": Budget(resolution=64, steps=1500, batch_size=8, variants_per_face=6, max_photos=60,
                      augment_copies=True),
    "ci": Budget(resolution=32, steps=12, batch_size=8, variants_per_face=3, max_photos=8,
                 augment_copies=True),
}

# (mirror, degrees, scale) copies of each embedded portrait: 12 photos per person.
_AUGMENTS = [(f, a, s) for f in (False, True) for a in (-8, 0, 8) for s in (1.0, 0.75)]

NOTE = """\
NOTE: this model saw {n} photo(s) for {steps} steps at {res} px. It is a demonstration that every
part of deocc works on this machine, not a useful de-occluder: expect blurry, barely-trained
output{leak}. Compare shipped_side_by_side above: the model deocc ships (pretrained/deocc-realtime-128,
trained on thousands of faces; its card gives its numbers). To train one like it:
  python -m data_prep.build --input=PHOTOS --output_dir=DATA --resolution=128 \\
      --occluders_dir=../shared/occluders
  python -m deocc_jax.train --config=configs/realtime.py --workdir=RUN --config.data_dir=DATA
then evaluate, export and run it with deocc_jax.evaluate / deocc_jax.export / deocc_jax.infer
(or fine-tune the shipped one with --config.init_from=pretrained/deocc-realtime-128)."""


# The embedded copies of two portraits are near-duplicates by design: grouped, they would make
# two groups for three splits and leave the test split empty. 0 turns grouping off.
EMBEDDED_NEAR_DUPLICATES = 0.0


def augmented_copies(paths: list[str], out_dir: str) -> list[str]:
    """Writes mirrored / rotated / rescaled PNG copies of each photo; returns their paths.

    They give data prep more than two "photos" to split into train/validation/
    test, but every split shows the same two people.
    """
    import cv2
    import numpy as np
    from deocc_jax.restoration import infer_lib

    os.makedirs(out_dir, exist_ok=True)
    out = []
    for path in paths:
        image = infer_lib.read_rgb(path)
        h, w = image.shape[:2]
        stem = os.path.splitext(os.path.basename(path))[0]
        for flip, angle, scale in _AUGMENTS:
            img = image[:, ::-1] if flip else image
            M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            img = cv2.warpAffine(np.ascontiguousarray(img), M, (w, h), flags=cv2.INTER_AREA,
                                 borderMode=cv2.BORDER_REFLECT_101)
            name = f"{stem}_{'m' if flip else 'o'}_r{angle:+d}_s{int(scale * 100)}.png"
            infer_lib.write_rgb(os.path.join(out_dir, name), img)
            out.append(os.path.join(out_dir, name))
    return out


def select_photos(input_spec: str, max_photos: int, out_dir: str) -> list[str]:
    """The first `max_photos` photos of --input (sorted), linked into one folder for data prep."""
    from deocc_jax.restoration import infer_lib
    paths = infer_lib.collect_images(input_spec)
    if not os.path.isdir(input_spec) and len(paths) == 1:
        raise ValueError(f"--input {input_spec!r} is one photo; give a folder or glob of several")
    paths = paths[:max_photos]
    os.makedirs(out_dir, exist_ok=True)
    for p in paths:
        # Two photos of one name (a glob over folders) are refused, not one lost.
        atomic.copy_file(p, os.path.join(out_dir, os.path.basename(p)))
    return [os.path.join(out_dir, os.path.basename(p)) for p in paths]


def prepare_dataset(photos_dir: str, data_dir: str, *, resolution: int, variants_per_face: int,
                    seed: int, occluders_dir: str | None,
                    near_duplicates: float | None = None) -> dict[str, Any]:
    """Runs data prep (`data_prep.build_lib.build_dataset`) on the photos; returns dataset_info.json."""
    from data_prep.build_lib import build_dataset
    extra = {} if near_duplicates is None else {"near_duplicates": near_duplicates}
    return build_dataset(photos_dir, data_dir, resolution=resolution,
                         variants_per_face=variants_per_face, seed=seed,
                         splits="train=0.7,validation=0.15,test=0.15",
                         occluders_dir=occluders_dir, overwrite=True, **extra)


def run(output_dir: str, *, input_spec: str | None = None, occluders_dir: str | None = None,
        budget: str = "default", steps: int | None = None, max_photos: int | None = None,
        seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every stage and returns {"outputs": {...}, "timings_s": {...}, ...}.

    Args:
      output_dir: everything goes below it (photos/, data/, workdir/, eval/,
        export/, infer/, quickstart.json).
      input_spec: folder or glob of face photos; None = embedded portraits.
      occluders_dir: RGBA occluders; None = procedural only.
      budget: "default" or "ci".
      steps: training steps override.
      max_photos: cap on the number of input photos.
      seed: seeds data preparation and training.
      log: progress output.
    """
    from configs import tiny
    from deocc_jax.artifacts import export_lib, predictors
    from deocc_jax.evaluation import eval_lib, face_metrics
    from deocc_jax.faces import sample_photos
    from deocc_jax.restoration import infer_lib
    from deocc_jax.training import train_lib

    b = BUDGETS[budget]
    steps = steps or b.steps
    d = {k: os.path.join(output_dir, k) for k in ("photos", "data", "workdir", "eval", "export", "infer")}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str):
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)
        log(f"[quickstart] {name} done in {timings[name]:.0f} s")

    # 1. Photos.
    embedded = input_spec is None
    if embedded:
        originals = sample_photos.face_photo_paths()
        photos = augmented_copies(originals, d["photos"])
        log(f"[quickstart] {len(photos)} photos: mirrored/rotated/scaled copies of the embedded "
            f"portraits {[os.path.basename(p) for p in originals]}")
    else:
        photos = select_photos(input_spec, max_photos or b.max_photos, d["photos"])
        originals = photos
        log(f"[quickstart] {len(photos)} photos from {input_spec}")

    # 2. Dataset.
    info = prepare_dataset(d["photos"], d["data"], resolution=b.resolution,
                           variants_per_face=b.variants_per_face, seed=seed,
                           occluders_dir=occluders_dir,
                           near_duplicates=EMBEDDED_NEAR_DUPLICATES if embedded else None)
    counts = {k: v.get("num_records") for k, v in info.get("splits", {}).items()}
    log(f"[quickstart] dataset {d['data']}: {counts}")
    stage("data")

    # 3. Train the tiny config.
    import jax
    n_dev = jax.device_count()
    config = tiny.get_config()
    with config.unlocked():
        config.data_dir = d["data"]
        config.resolution = b.resolution
        # The batch is split over every device, so it must be a multiple of their count.
        config.batch_size = -(-b.batch_size // n_dev) * n_dev
        config.num_train_steps = steps
        config.seed = seed
        config.log_every_steps = max(1, min(100, steps // 10))
        config.eval_every_steps = max(1, steps // 3)
        config.checkpoint_every_steps = max(1, steps // 3)
        config.async_checkpointing = False
        config.num_eval_examples = -1
    train_lib.train_and_evaluate(config, d["workdir"])
    stage("train")

    # 4. Evaluate against the baselines.
    metrics_path = os.path.join(d["eval"], "metrics.json")
    with face_metrics.FaceMetrics() as fm:
        result = eval_lib.evaluate(d["workdir"], d["data"], split="test", output=metrics_path,
                                   batch_size=16, face_metrics=fm, log=log)
    stage("evaluate")

    # 5. Export + self-check on the real photos.
    meta = export_lib.export_model(d["workdir"], d["export"], check_images=originals[:3], log=log)
    export_path = os.path.join(d["export"], str(meta["step"]))
    stage("export")

    # 6. Inference on a real photo with an occluder drawn on it.
    demo_in = demo_photo.occluded_demo_photo(originals[0], os.path.join(d["infer"], "input",
                                                             "demo_occluded.png"),
                                  seed, occluders_dir)
    model = predictors.open_predictor(d["export"])
    reports = infer_lib.process_photos(model, demo_in, os.path.join(d["infer"], "output"),
                                       save_masks=True, side_by_side_out=True, log=log)
    # The same photo through the model deocc ships: what a trained de-occluder does.
    shipped = predictors.open_predictor(None)
    log(f"[quickstart] the same photo with the shipped model ({shipped.description})")
    shipped_reports = infer_lib.process_photos(
        shipped, demo_in, os.path.join(d["infer"], "shipped_model"), side_by_side_out=True, log=log)
    stage("infer")

    outputs = {
        "photos": os.path.abspath(d["photos"]),
        "dataset": os.path.abspath(d["data"]),
        "contact_sheet": os.path.abspath(os.path.join(d["data"], "contact_sheet.png")),
        "workdir": os.path.abspath(d["workdir"]),
        "tensorboard": f"tensorboard --logdir={os.path.abspath(d['workdir'])}",
        "metrics": result["outputs"]["metrics"],
        "metrics_table": result["outputs"]["markdown"],
        "eval_samples": result["outputs"]["grid"],
        "export": os.path.abspath(export_path),
        "demo_input": os.path.abspath(demo_in),
        "demo_output": os.path.abspath(reports[0]["output"]),
        "demo_mask": os.path.abspath(reports[0]["files"][0]),
        "demo_side_by_side": os.path.abspath(reports[0]["files"][1]),
        "shipped_model_output": os.path.abspath(shipped_reports[0]["output"]),
        "shipped_side_by_side": os.path.abspath(shipped_reports[0]["files"][0]),
    }
    summary = {"budget": budget, "steps": steps, "resolution": b.resolution,
               "embedded_photos": embedded, "num_photos": len(photos), "dataset_counts": counts,
               "timings_s": timings, "outputs": outputs,
               "model_psnr_occluded": result["methods"][eval_lib.MODEL]["overall"].get("masked_psnr"),
               "demo_faces": reports[0]["faces"]}
    atomic.write_text(os.path.join(output_dir, "quickstart.json"), json.dumps(summary, indent=2))
    outputs["summary"] = os.path.abspath(os.path.join(output_dir, "quickstart.json"))

    log("")
    log(open(result["outputs"]["markdown"]).read())
    log("outputs:")
    width = max(len(k) for k in outputs)
    for k, v in outputs.items():
        log(f"  {k.ljust(width)}  {v}")
    log("")
    log(f"total {sum(timings.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    leak = (" (and its test photos are copies of the same two people it trained on, so the "
            "metrics above flatter it)") if embedded else ""
    log(NOTE.format(n=len(photos), steps=steps, res=b.resolution, leak=leak))
    return summary


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    out = _OUTPUT.value
    if os.path.exists(out) and os.listdir(out):
        if not _OVERWRITE.value:
            raise errors.OutputExistsError(f"--output_dir={out}: not empty; pass --overwrite or "
                                           "another folder")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    run(out, input_spec=_INPUT.value, occluders_dir=_OCCLUDERS.value, budget=_BUDGET.value,
        steps=_STEPS.value, max_photos=_MAX_PHOTOS.value, seed=_SEED.value)


def run_main():
    """Console-script entry point (`deocc-quickstart`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run_main()
