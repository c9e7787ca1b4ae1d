r"""Quality for the same wall-clock budget: unet_l1, pix2pix and deocc against the baselines.

  python -m benchmarks.quality --budget_s=1800 --output=benchmarks/results/quality.json
  python -m benchmarks.quality --budget_s=240 --batch_size=8      # a quick look (see README)

On one data set prepared from real photos (`data_prep.build_dataset` of --photos at 128 px,
built into --data_dir when missing), each of --configs is trained by the project's own trainer
(`python -m deocc_jax.train`, one child process at a time) for the same wall-clock budget, then
all of them are evaluated on the test split with `eval_lib.evaluate` (the `deocc_jax.evaluate`
path) next to the occluded input and the OpenCV Telea / Navier-Stokes baselines.

The budget uses the training loop's own preemption mechanism: the trainer runs with a step
count it will not reach, and when the budget is spent it gets SIGTERM, finishes the current step,
saves a checkpoint and exits (code 143). The clock starts when the trainer logs its first step,
so process start-up and XLA compilation (reported separately as `startup_s`) do not eat into the
budget of a model that compiles slowly; every model gets --budget_s seconds of training steps.

Schedules (--schedules): a learning-rate schedule that decays over `num_train_steps`, a warm-up
of 500-1000 steps or an EMA with decay 0.999 assumes the step count is known and large; with a
wall-clock budget it is neither. `budget` (default) therefore trains every model with its
config's optimiser (learning rate, betas, clipping) at a constant rate, without warm-up and
without EMA, everything else as configured; `config` keeps the configs' schedules exactly, with
num_train_steps = --max_steps (use it with a --max_steps the budget reaches).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

from absl import app, flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def define_flags() -> None:
    """The binary's absl flags (defined only when run as a program, so that importing this
    module next to other benchmarks and tests defines no flags)."""
    flags.DEFINE_list("configs", ["unet_l1", "pix2pix", "deocc"], "Configs to train.")
    flags.DEFINE_float("budget_s", 1800.0, "Wall-clock seconds of training per model.")
    flags.DEFINE_integer("batch_size", 8, "Training batch size (all models).")
    flags.DEFINE_integer("resolution", 128, "Crop size of data and models.")
    flags.DEFINE_integer("max_steps", 100_000, "num_train_steps given to the trainer.")
    flags.DEFINE_enum("schedules", "budget", ["budget", "config"],
        "budget: constant lr, no warm-up, no EMA; config: as configured.")
    common.define_data_flags()
    flags.adopt_module_key_flags(common)  # list them in this binary's --help
    flags.DEFINE_string("work_dir", "/tmp/deocc_bench/quality",
        "Workdirs, logs and the evaluation go here (replaced).")
    flags.DEFINE_float("startup_timeout_s", 1800.0,
        "Give up on a trainer that logs no step in this time.")
    flags.DEFINE_integer("seed", 0, "Training seed (all models).")
    flags.DEFINE_string("note", "", "A sentence printed under the table (e.g. what the run was).")
    flags.DEFINE_string("output", "", "JSON file to write; the Markdown table goes beside it.")


METRIC_COLUMNS = (("psnr", "PSNR (dB)", ".2f"), ("ssim", "SSIM", ".4f"), ("mse", "MSE", ".5f"),
                  ("masked_psnr", "PSNR occl. (dB)", ".2f"), ("masked_ssim", "SSIM occl.", ".4f"),
                  ("masked_mse", "MSE occl.", ".5f"), ("mask_iou", "mask IoU", ".4f"))
BASELINES = ("occluded_input", "opencv_telea", "opencv_ns")


def trainer_command(name: str, workdir: str, data_dir: str, *, resolution: int, batch_size: int,
                    max_steps: int, schedules: str, seed: int) -> list[str]:
    """The `deocc_jax.train` command line for one model of the comparison."""
    cmd = [sys.executable, "-m", "deocc_jax.train", f"--config=configs/{name}.py",
           f"--workdir={workdir}", f"--config.data_dir={data_dir}",
           f"--config.resolution={resolution}", f"--config.batch_size={batch_size}",
           f"--config.num_train_steps={max_steps}", f"--config.seed={seed}",
           # One log line per step: the budget clock starts at the first one and the step count
           # is known at any time. No validation during training: the test split is evaluated
           # once at the end, the same way for every model.
           "--config.log_every_steps=1", "--config.eval_every_steps=0",
           f"--config.checkpoint_every_steps={max_steps}", "--config.keep_best_checkpoints=0"]
    if schedules == "budget":
        for opt in ("g", "d"):
            cmd += [f"--config.optim.{opt}.schedule=constant", f"--config.optim.{opt}.warmup_steps=0"]
        cmd.append("--config.optim.ema_decay=0.0")
    return cmd


class _LogWatcher:
    """Copies a child's output to a file and notes when its first and latest step were logged."""

    def __init__(self, stream, path: str):
        self.first_step_time: float | None = None
        self.last_step = 0
        self._stream, self._file = stream, open(path, "w")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for line in self._stream:
            self._file.write(line)
            self._file.flush()
            # train_lib logs "step 12/100000 | ..." after each logged step.
            marker = line.find("] step ")
            if marker >= 0:
                try:
                    step = int(line[marker + 7:].split("/", 1)[0])
                except ValueError:
                    continue
                if self.first_step_time is None:
                    self.first_step_time = time.monotonic()
                self.last_step = step

    def join(self):
        self._thread.join(timeout=30)
        self._file.close()


def train_for_budget(name: str, workdir: str, data_dir: str, budget_s: float, *,
                     startup_timeout_s: float, log=print, **kwargs) -> dict[str, Any]:
    """Trains configs/<name>.py in a child process for `budget_s` seconds of steps.

    Returns:
      {"steps", "startup_s", "train_s", "steps_per_s", "stopped_by_budget", "stop_to_exit_s"
      (finishing the current step and saving), "exit_code", "command", "log"}; steps is the step
      of the checkpoint the trainer saved when it stopped.

    Raises:
      RuntimeError: the trainer failed, logged no step in time, or saved no checkpoint.
    """
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    cmd = trainer_command(name, workdir, data_dir, **kwargs)
    log_path = os.path.join(workdir, "train.log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [common.REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=common.REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    watcher = _LogWatcher(proc.stdout, log_path)
    log(f"{name}: training for {budget_s:.0f} s after its first step (log: {log_path})")
    while watcher.first_step_time is None and proc.poll() is None:
        if time.monotonic() - start > startup_timeout_s:
            proc.kill()
            proc.wait()
            watcher.join()
            raise RuntimeError(f"{name}: no training step logged within {startup_timeout_s:.0f} s; "
                               f"see {log_path}")
        time.sleep(0.5)
    first = watcher.first_step_time
    load_first = os.getloadavg()[0]
    if first is not None:
        while proc.poll() is None and time.monotonic() - first < budget_s:
            time.sleep(0.5)
    stopped = time.monotonic()
    # Other jobs on the same cores cost a model steps: the load shows how fair the budget was.
    load = [load_first, os.getloadavg()[0]]
    signalled = proc.poll() is None
    if signalled:
        proc.send_signal(signal.SIGTERM)  # the loop saves a checkpoint and exits with 143
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    exited = time.monotonic()
    watcher.join()
    if code not in (0, 143) or first is None:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{name}: trainer exited with code {code}; {log_path} ends with:\n{tail}")
    from deocc_jax import infer_lib

    steps = infer_lib.checkpoint_step(workdir)
    train_s = stopped - first
    return {"steps": steps, "steps_logged": watcher.last_step, "startup_s": first - start,
            "train_s": train_s, "steps_per_s": (steps - 1) / train_s if train_s > 0 else None,
            "load_average_1m": load, "stopped_by_budget": signalled, "stop_to_exit_s": exited - stopped,
            "exit_code": code, "command": " ".join(cmd), "log": log_path}


def quality_table(metrics: Mapping[str, Mapping[str, float]], runs: Mapping[str, Mapping[str, Any]],
                  order: Sequence[str]) -> str:
    """Markdown table: one row per trained model then per baseline.

    Args:
      metrics: method name -> overall metrics (eval_lib's "overall" dict).
      runs: model name -> train_for_budget's record (steps, train_s); baselines have none.
      order: row order (method names as in `metrics`).
    """
    head = ["method", "steps", "train s"] + [label for _, label, _ in METRIC_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in order:
        m, r = metrics[name], runs.get(name, {})
        cells = [name, str(r["steps"]) if "steps" in r else "–",
                 f"{r['train_s']:.0f}" if "train_s" in r else "–"]
        for key, _, fmt in METRIC_COLUMNS:
            v = m.get(key)
            cells.append("–" if v is None else format(v, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_by(metrics: Mapping[str, Mapping[str, float]], key: str, higher: bool = True) -> str:
    """Name of the method with the best `key` (ties: first in iteration order)."""
    vals = {k: v[key] for k, v in metrics.items() if v.get(key) is not None}
    if not vals:
        raise ValueError(f"no method has {key!r}")
    return (max if higher else min)(vals, key=vals.get)


def markdown_report(rec: Mapping[str, Any]) -> str:
    m = rec["machine"]
    lines = [
        f"### Quality for the same wall-clock budget ({rec['budget_s']:.0f} s of training steps per model)",
        "",
        f"Test split of `{rec['dataset']['data_dir']}` ({rec['num_test_examples']} examples, "
        f"{rec['resolution']} px, {rec['dataset']['images_read']} photos x "
        f"{rec['dataset']['variants_per_face']} occluded variants); batch {rec['batch_size']}; "
        f"schedules: {rec['schedules']}; {m['cpu_model']}, {m['cpu_cores_available']} cores "
        f"({m['jax_backend']}). Start-up and compilation are not counted in the budget "
        f"(start-up s: " + ", ".join(f"{k} {v['startup_s']:.0f}" for k, v in rec["runs"].items())
        + ").",
        "",
        quality_table(rec["metrics"], rec["runs"], rec["order"]),
        f"Best occluded-region PSNR: **{rec['best']['masked_psnr']}**; best occluded-region SSIM: "
        f"**{rec['best']['masked_ssim']}**. Higher is better except MSE; masked metrics are inside "
        "the true occluder mask; mask IoU only for models that predict a mask. Per-category tables: "
        f"the .md files in `{rec['eval_markdown']}`.",
    ]
    if rec.get("note"):
        lines += ["", rec["note"]]
    return "\n".join(lines) + "\n"


def evaluate_in_child(data_dir: str, output: str, *, compare: Sequence[str] = (),
                      baselines: bool = False) -> dict[str, Any]:
    """`python -m deocc_jax.evaluate` on the test split in a child process; its metrics.json.

    A child process with the code as it is now: each model is evaluated right after its
    training, by the same model code that trained it, even if the working tree changes during a
    long run (a checkpoint only loads into the module structure that wrote it).
    """
    import json

    cmd = [sys.executable, "-m", "deocc_jax.evaluate", f"--data_dir={data_dir}", "--split=test",
           f"--output={output}", "--baselines" if baselines else "--nobaselines"]
    cmd += [f"--compare={d}" for d in compare]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [common.REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(cmd, cwd=common.REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluation failed ({' '.join(cmd)}):\n{proc.stdout[-4000:]}")
    with open(output) as f:
        return json.load(f)


def overall_metrics(result: Mapping[str, Any], prefix: str = "compare:") -> dict[str, dict]:
    """method name (without the compare: prefix) -> the table's overall metrics and count."""
    out = {}
    for method, v in result["methods"].items():
        name = method[len(prefix):] if method.startswith(prefix) else method
        out[name] = {k: v["overall"].get(k) for k, _, _ in METRIC_COLUMNS}
        out[name]["count"] = v["overall"]["count"]
    return out


def run_benchmark(configs: Sequence[str], budget_s: float, *, data_dir: str, work_dir: str,
                  resolution: int, batch_size: int, max_steps: int, schedules: str, seed: int,
                  startup_timeout_s: float, log=print) -> dict[str, Any]:
    """Trains every config for the budget, evaluates them with the baselines; the record.

    Every method is evaluated on the same examples (the whole test split, in file order) by
    `deocc_jax.evaluate`; the baselines once, each model right after its training.
    """
    from deocc_jax.data import features

    info = features.read_dataset_info(data_dir)
    if int(info["resolution"]) != resolution:
        raise ValueError(f"{data_dir} is {info['resolution']} px, not --resolution={resolution}")
    eval_dir = os.path.join(work_dir, "eval")
    base = evaluate_in_child(data_dir, os.path.join(eval_dir, "baselines.json"), baselines=True)
    metrics = overall_metrics(base)
    evals = {"baselines": base["outputs"]}
    runs = {}
    for name in configs:
        workdir = os.path.join(work_dir, name)
        runs[name] = train_for_budget(
            name, workdir, data_dir, budget_s, startup_timeout_s=startup_timeout_s, log=log,
            resolution=resolution, batch_size=batch_size, max_steps=max_steps,
            schedules=schedules, seed=seed)
        log(f"{name}: {runs[name]['steps']} steps in {runs[name]['train_s']:.0f} s "
            f"(+{runs[name]['startup_s']:.0f} s start-up); evaluating")
        result = evaluate_in_child(data_dir, os.path.join(eval_dir, f"{name}.json"), compare=[workdir])
        if result["num_examples"] != base["num_examples"]:
            raise RuntimeError(f"{name} was evaluated on {result['num_examples']} examples, the "
                               f"baselines on {base['num_examples']}")
        metrics.update(overall_metrics(result))
        evals[name] = result["outputs"]
    order = list(configs) + [b for b in BASELINES if b in metrics]
    return {
        "benchmark": "quality", "budget_s": budget_s, "resolution": resolution,
        "batch_size": batch_size, "schedules": schedules, "max_steps": max_steps, "seed": seed,
        "dataset": common.dataset_summary(info, data_dir),
        "num_test_examples": base["num_examples"], "runs": runs, "metrics": metrics,
        "order": order,
        "best": {"masked_psnr": best_by({k: metrics[k] for k in order}, "masked_psnr"),
                 "masked_ssim": best_by({k: metrics[k] for k in order}, "masked_ssim")},
        "evaluations": evals, "eval_markdown": eval_dir,
        "machine": common.machine_info(), "code": common.code_state(),
        "load_average_1m_at_end": os.getloadavg()[0],
    }


def main(argv):
    del argv
    F = flags.FLAGS
    common.prepare_dataset(F.data_dir, photos_dir=F.photos, max_photos=F.max_photos,
                           resolution=F.resolution, occluders_dir=F.occluders_dir or None)
    rec = run_benchmark(F.configs, F.budget_s, data_dir=F.data_dir, work_dir=F.work_dir,
                        resolution=F.resolution, batch_size=F.batch_size, max_steps=F.max_steps,
                        schedules=F.schedules, seed=F.seed, startup_timeout_s=F.startup_timeout_s)
    rec["command"] = " ".join(["python -m benchmarks.quality"] + sys.argv[1:])
    if F.note:
        rec["note"] = F.note
    md = markdown_report(rec)
    if F.output:
        common.write_json(F.output, rec)
        with open(os.path.splitext(F.output)[0] + ".md", "w") as f:
            f.write(md)
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
