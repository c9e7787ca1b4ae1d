r"""Quality at equal compute: configs (and ablations of them) trained for the same CPU budget.

  python -m benchmarks.quality --budget_s=1800 --output=benchmarks/results/quality.json
  python -m benchmarks.quality --budget_s=3600 --configs= \
      --variant=deocc=configs/deocc.py \
      --variant=noattn=configs/deocc.py,model.generator.self_attention_stride=0,model.generator.attention_gates=False \
      --variant=guided=configs/deocc.py,model.mode=guided

What is trained (`--configs` and `--variant`, combined, names unique):
  --configs=NAME[,...]           configs/NAME.py, or a config file PATH[:ARG]; named after the
                                 file (and ARG). Default: unet_l1, pix2pix, deocc.
  --variant=NAME=PATH[:ARG][,KEY=VALUE...]   (repeatable) a config file with dotted overrides,
                                 given to the trainer as --config.KEY=VALUE, e.g. an ablation
                                 without attention or guided by the true mask (no mask head).
                                 VALUEs cannot contain commas.
Every spec is parsed with the trainer's own config parser (ml_collections config_flags) before
anything runs, so a typo in a key fails at once, naming the variant.

Each variant is trained by the project's trainer (`python -m deocc_jax.train`) in its own child
process, at its own pace, on the same data set (prepared from real photos with
`data_prep.build_dataset` into --data_dir when missing), and stopped when it has used its budget.
Then `deocc_jax.evaluation.eval_lib.evaluate` evaluates all of them in one pass over the test split next to
the baselines (occluded input, OpenCV Telea and Navier-Stokes given the true mask), with the
face-aware metrics when --face_metrics is given.

The budget (--budget=cpu, the default) is **CPU-seconds of the training process** (user + system
time of all its threads and child processes, from /proc; Linux): this 2-core machine is shared
with other jobs, which take cores at random times. A wall-clock budget (--budget=wall) gives a
model fewer steps whenever another job runs, so a comparison would measure the load rather than
the configs; CPU time counts only the work the trainer itself was given the cores for, so every
variant gets the same compute however busy the machine was and whether the variants run one
after another or side by side (--parallel). Residual unfairness: thread pools spin-wait a little
longer and caches are colder on oversubscribed cores, so keep the load similar; the JSON records
it. Wall-clock seconds are reported as well.

The budget clock starts when the trainer logs its first step, so start-up and XLA compilation
(reported as `startup_cpu_s` / `startup_wall_s`) are not charged to a model that compiles slowly.
The trainer runs with a step count it will not reach and logs every step; when the budget is
spent it gets SIGTERM, finishes the current step, saves a checkpoint and exits (code 143), the
training loop's own preemption path. Reported per variant: `steps` (the last step, the one
checkpointed), `cpu_s` and `wall_s` spent from the first to the last step (steps 2..N: the last
step may overrun the budget by less than one step), and the evaluation metrics.

Schedules (--schedules): a warm-up of 500-1000 steps, a decay over `num_train_steps` or an EMA with
decay 0.999 assume the step count is known and large; with a compute budget it is neither.
`budget` (default) trains every variant with its config's optimiser (learning rate, betas,
clipping) at a constant rate, without warm-up and without EMA, everything else as configured;
`config` keeps the configs' schedules exactly with num_train_steps = --max_steps (use it with a
--max_steps the budget reaches). A variant's own overrides come last and win.
"""

import os
import sys

from absl import app, flags

from benchmarks import common, quality_lib, quality_variants

DEFAULT_CONFIGS = ("unet_l1", "pix2pix", "deocc")

_CONFIGS = flags.DEFINE_list("configs", list(DEFAULT_CONFIGS),
                             "Configs to train: NAME (configs/NAME.py) or PATH[:ARG]; '' = none.")
_VARIANT = flags.DEFINE_multi_string("variant", [], "NAME=PATH[:ARG][,KEY=VALUE...]: a config "
                                     "file with dotted overrides (repeatable).")
_BUDGET = flags.DEFINE_enum("budget", "cpu", list(quality_lib.BUDGETS), "What --budget_s counts: "
                            "CPU-seconds of the training process (all threads) or wall-clock "
                            "seconds.")
_BUDGET_S = flags.DEFINE_float("budget_s", 1800.0, "Seconds of training per variant (after its "
                               "first step).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Variants trained at the same time (each in its "
                                 "own process; fair under --budget=cpu).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Training batch size (all variants).")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Crop size of data and models.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 100_000, "num_train_steps given to the trainer.")
_SCHEDULES = flags.DEFINE_enum("schedules", "budget", ["budget", "config"],
                               "budget: constant lr, no warm-up, no EMA; config: as configured.")
_FACE_METRICS = flags.DEFINE_bool("face_metrics", False, "Also the face-aware metrics "
                                  "(expression, landmarks, identity; MediaPipe, identity needs "
                                  "requirements-eval.txt).")
_EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", 32, "Evaluation batch.")
_MAX_EVAL_EXAMPLES = flags.DEFINE_integer("max_eval_examples", None, "Evaluate on the first n "
                                          "test examples (face metrics cost ~0.1 s per example "
                                          "and method).")
_DATA = common.define_data_flags()
flags.adopt_module_key_flags(common)  # list them in this binary's --help
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/deocc_bench/quality",
                                "Workdirs, logs and the evaluation go here (replaced).")
_STARTUP_TIMEOUT_S = flags.DEFINE_float("startup_timeout_s", 1800.0, "Give up on a trainer that "
                                        "logs no step in this many wall seconds.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed (all variants).")
_NOTE = flags.DEFINE_string("note", "", "A sentence printed under the table (e.g. what the run "
                            "was).")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file to write; the Markdown table goes beside "
                              "it.")


def main(argv):
    del argv
    data_dir = _DATA.data_dir.value
    settings = dict(resolution=_RESOLUTION.value, batch_size=_BATCH_SIZE.value,
                    max_steps=_MAX_STEPS.value, schedules=_SCHEDULES.value, seed=_SEED.value)
    try:
        variants = quality_variants.collect_variants(_CONFIGS.value, _VARIANT.value)
        # Before the data set is prepared (minutes): a typo in a spec fails at once.
        quality_variants.resolve_variants(variants, data_dir, **settings)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    common.prepare_dataset(data_dir, photos_dir=_DATA.photos.value,
                           max_photos=_DATA.max_photos.value, resolution=_RESOLUTION.value,
                           occluders_dir=_DATA.occluders_dir.value or None)
    rec = quality_lib.run_benchmark(
        variants, budget=_BUDGET.value, budget_s=_BUDGET_S.value, data_dir=data_dir,
        work_dir=_WORK_DIR.value, parallel=_PARALLEL.value,
        startup_timeout_s=_STARTUP_TIMEOUT_S.value, face_metrics_on=_FACE_METRICS.value,
        eval_batch_size=_EVAL_BATCH_SIZE.value, max_eval_examples=_MAX_EVAL_EXAMPLES.value,
        **settings)
    rec["command"] = " ".join(["python -m benchmarks.quality"] + sys.argv[1:])
    if _NOTE.value:
        rec["note"] = _NOTE.value
    md = quality_lib.markdown_report(rec)
    if _OUTPUT.value:
        common.write_json(_OUTPUT.value, rec)
        with open(os.path.splitext(_OUTPUT.value)[0] + ".md", "w") as f:
            f.write(md)
    print(md)


if __name__ == "__main__":
    app.run(main)
