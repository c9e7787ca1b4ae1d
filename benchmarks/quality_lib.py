"""Quality at equal compute: train each variant for a CPU (or wall-clock) budget, evaluate all.

The library of `python -m benchmarks.quality`, whose docstring says how the budget is counted
and charged; `benchmarks/quality_variants.py` parses what is trained. `TrainerRun` runs one
variant's trainer in a child process and stops it (SIGTERM: the training loop's own preemption
path) when its budget is spent; `run_benchmark` trains every variant and evaluates them in one
pass next to the baselines.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from benchmarks import common
from benchmarks.quality_variants import Variant, resolve_variants, trainer_command
from deocc_jax.evaluation import eval_lib, face_metrics
from deocc_jax.data import features

BUDGETS = ("cpu", "wall")
PRIMARY_METRICS = ("psnr", "ssim", "mse", "masked_psnr", "masked_ssim", "masked_mse", "mask_iou")
BASELINES = ("occluded_input", "opencv_telea", "opencv_ns")


# ----------------------------------------------------------------------------- running a trainer


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads and its live descendants.

    Read from /proc (Linux). A process that has exited counts as 0.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
            tasks = os.listdir(f"/proc/{p}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Fields after "(comm)": state ppid ... utime (14th field) stime (15th).
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / ticks


class _LogWatcher:
    """Copies a trainer's output to a file and samples wall and CPU time at every logged step."""

    def __init__(self, stream, path: str, cpu_of: Callable[[], float]):
        self.steps: list[tuple[int, float, float]] = []  # (step, monotonic s, CPU s)
        self._stream, self._file, self._cpu_of = stream, open(path, "w"), cpu_of
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for line in self._stream:
            self._file.write(line)
            self._file.flush()
            step = parse_step(line)
            if step is not None:
                self.steps.append((step, time.monotonic(), self._cpu_of()))

    def join(self):
        self._thread.join(timeout=30)
        self._file.close()


def parse_step(line: str) -> int | None:
    """The step of a train_lib progress line ("I... train_lib.py:123] step 12/100000 | ...")."""
    m = re.search(r"\] step (\d+)/\d+", line)
    return int(m.group(1)) if m else None


class TrainerRun:
    """One variant's trainer in a child process, stopped when its budget is spent.

    Call `start()`, then `poll()` until it returns True; `record` then holds the result.
    """

    def __init__(self, variant: Variant, cmd: list[str], workdir: str, *, budget: str,
                 budget_s: float, startup_timeout_s: float, stop_timeout_s: float = 600.0,
                 log: Callable[[str], None] = print):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
        self.variant, self.cmd, self.workdir = variant, cmd, workdir
        self.budget, self.budget_s = budget, budget_s
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.log = log
        self.record: dict[str, Any] | None = None
        self._proc = self._watcher = None
        self._signalled_at: tuple[float, float] | None = None  # (monotonic, CPU) at SIGTERM
        self._load: list[float] = []

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "train.log")

    def cpu_s(self) -> float:
        return process_tree_cpu_s(self._proc.pid)

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.makedirs(self.workdir)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [common.REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self._start = time.monotonic()
        self._proc = subprocess.Popen(self.cmd, cwd=common.REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        self._watcher = _LogWatcher(self._proc.stdout, self.log_path, self.cpu_s)
        self.log(f"{self.variant.name}: training for {self.budget_s:.0f} {self.budget}-s after "
                 f"its first step (log: {self.log_path})")

    def kill(self) -> None:
        """Ends the trainer now (used when another variant failed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._watcher is not None:
            self._watcher.join()

    def _fail(self, why: str) -> RuntimeError:
        self.kill()
        with open(self.log_path) as f:
            tail = f.read()[-3000:]
        return RuntimeError(f"{self.variant.name}: {why}; {self.log_path} ends with:\n{tail}")

    def poll(self) -> bool:
        """Checks the trainer once; True when it has exited and `record` is set.

        Raises:
          RuntimeError: the trainer failed, logged no step in time, or did not stop.
        """
        now = time.monotonic()
        code = self._proc.poll()
        steps = self._watcher.steps
        if code is not None:
            self._watcher.join()
            if code not in (0, 143) or not self._watcher.steps:
                raise self._fail(f"trainer exited with code {code}")
            self._finish(code, now)
            return True
        if not steps:
            if now - self._start > self.startup_timeout_s:
                raise self._fail(f"no training step logged within {self.startup_timeout_s:.0f} s")
            return False
        if self._signalled_at is None:
            _, t_first, cpu_first = steps[0]
            used = (self.cpu_s() - cpu_first) if self.budget == "cpu" else (now - t_first)
            if not self._load:
                self._load.append(os.getloadavg()[0])
            if used >= self.budget_s:
                self._signalled_at = (now, self.cpu_s())
                self._load.append(os.getloadavg()[0])
                self._proc.send_signal(signal.SIGTERM)  # the loop saves and exits with 143
        elif now - self._signalled_at[0] > self.stop_timeout_s:
            raise self._fail(f"did not stop within {self.stop_timeout_s:.0f} s of SIGTERM")
        return False

    def _finish(self, code: int, exited: float) -> None:
        steps = self._watcher.steps
        (first, t_first, cpu_first), (last, t_last, cpu_last) = steps[0], steps[-1]
        cpu_s, wall_s = cpu_last - cpu_first, t_last - t_first
        signalled = self._signalled_at is not None
        self.record = {
            "steps": last, "cpu_s": cpu_s, "wall_s": wall_s,
            "steps_per_cpu_s": (last - first) / cpu_s if cpu_s > 0 else None,
            "steps_per_wall_s": (last - first) / wall_s if wall_s > 0 else None,
            # Share of one core the trainer got while training: < cores when others ran.
            "cores_busy": cpu_s / wall_s if wall_s > 0 else None,
            "budget": self.budget, "budget_s": self.budget_s,
            "startup_wall_s": t_first - self._start, "startup_cpu_s": cpu_first,
            "stopped_by_budget": signalled,
            "stop_to_exit_s": exited - self._signalled_at[0] if signalled else None,
            "load_average_1m": self._load + [os.getloadavg()[0]],
            "exit_code": code, "command": " ".join(self.cmd), "log": self.log_path,
        }
        self.log(f"{self.variant.name}: {last} steps, {cpu_s:.0f} CPU-s / {wall_s:.0f} wall-s "
                 f"(+{t_first - self._start:.0f} s start-up)")


def train_all(runs: Sequence[TrainerRun], parallel: int, poll_s: float = 0.5) -> None:
    """Runs the trainers, at most `parallel` at a time; on any failure ends the others."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    pending, active = list(runs), []
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                run.start()
                active.append(run)
            active = [r for r in active if not r.poll()]
            if active:
                time.sleep(poll_s)
    finally:
        for r in active:
            r.kill()


# ----------------------------------------------------------------------------- the report


def quality_table(metrics: Mapping[str, Mapping[str, float]],
                  runs: Mapping[str, Mapping[str, Any]], order: Sequence[str],
                  keys: Sequence[str] = PRIMARY_METRICS) -> str:
    """Markdown table: one row per trained variant then per baseline.

    Args:
      metrics: method name -> overall metrics (eval_lib's "overall" dict).
      runs: variant name -> TrainerRun.record (steps, cpu_s, wall_s); baselines have none.
      order: row order (method names as in `metrics`).
      keys: metric columns (eval_lib.METRIC_LABELS names them).
    """
    head = ["method", "steps", "CPU s", "wall s"] + [eval_lib.METRIC_LABELS[k] for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in order:
        m, r = metrics[name], runs.get(name, {})
        cells = [name, str(r["steps"]) if "steps" in r else "–",
                 _secs(r.get("cpu_s")), _secs(r.get("wall_s"))]
        cells += [_fmt(k, m.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _secs(v: float | None) -> str:
    return "–" if v is None else format(v, ".1f" if v < 100 else ".0f")


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    return format(v, ".2f" if key.endswith("psnr") else ".5f" if key.endswith("mse") else ".4f")


def best_by(metrics: Mapping[str, Mapping[str, float]], key: str, higher: bool = True) -> str:
    """Name of the method with the best `key` (ties: first in iteration order)."""
    vals = {k: v[key] for k, v in metrics.items() if v.get(key) is not None}
    if not vals:
        raise ValueError(f"no method has {key!r}")
    return (max if higher else min)(vals, key=vals.get)


def markdown_report(rec: Mapping[str, Any]) -> str:
    m = rec["machine"]
    unit = ("CPU-seconds of the trainer process" if rec["budget"] == "cpu"
            else "wall-clock seconds")
    lines = [
        f"### Quality at equal compute: {rec['budget_s']:.0f} {unit} of training per variant",
        "",
        f"Test split of `{rec['dataset']['data_dir']}` ({rec['num_test_examples']} examples, "
        f"{rec['resolution']} px); batch {rec['batch_size']}; schedules: {rec['schedules']}; "
        f"{m['cpu_model']}, {m['cpu_cores_available']} cores ({m['jax_backend']}). Start-up and "
        "compilation are not counted (start-up wall s: "
        + ", ".join(f"{k} {v['run']['startup_wall_s']:.0f}" for k, v in rec["variants"].items())
        + ").",
        "",
        quality_table(rec["metrics"], {k: v["run"] for k, v in rec["variants"].items()},
                      rec["order"], rec["metric_keys"]),
        f"Best occluded-region PSNR: **{rec['best']['masked_psnr']}**; best occluded-region SSIM: "
        f"**{rec['best']['masked_ssim']}**. Higher is better except MSE and the face metrics; "
        "masked metrics are inside the true occluder mask; mask IoU only for models that predict "
        f"a mask. Per-category tables: `{rec['evaluation']['markdown']}`.",
    ]
    overrides = {k: v["overrides"] for k, v in rec["variants"].items() if v["overrides"]}
    if overrides:
        lines += ["", "Variants: " + "; ".join(
            f"{k} = {rec['variants'][k]['config']} with " + ", ".join(o) for k, o in overrides.items())]
    if rec.get("note"):
        lines += ["", rec["note"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the benchmark


def run_benchmark(variants: Sequence[Variant], *, budget: str, budget_s: float, data_dir: str,
                  work_dir: str, resolution: int, batch_size: int, max_steps: int, schedules: str,
                  seed: int, parallel: int = 1, startup_timeout_s: float = 1800.0,
                  face_metrics_on: bool = False, eval_batch_size: int = 32,
                  max_eval_examples: int | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains every variant for the budget, evaluates them with the baselines; the record."""
    if budget not in BUDGETS or budget_s <= 0:
        raise ValueError(f"budget must be one of {BUDGETS} with budget_s > 0")
    info = features.read_dataset_info(data_dir)
    if int(info["resolution"]) != resolution:
        raise ValueError(f"{data_dir} is {info['resolution']} px, not --resolution={resolution}")
    kwargs = dict(resolution=resolution, batch_size=batch_size, max_steps=max_steps,
                  schedules=schedules, seed=seed)
    resolved = resolve_variants(variants, data_dir, **kwargs)  # a bad spec fails before training
    started = common.code_state()
    runs = [TrainerRun(v, trainer_command(v, os.path.join(work_dir, v.name), data_dir, **kwargs),
                       os.path.join(work_dir, v.name), budget=budget, budget_s=budget_s,
                       startup_timeout_s=startup_timeout_s, log=log) for v in variants]
    train_all(runs, parallel)

    fm = face_metrics.FaceMetrics() if face_metrics_on else None
    try:
        result = eval_lib.evaluate(None, data_dir, split="test",
                                   compare=[r.workdir for r in runs], include_baselines=True,
                                   batch_size=eval_batch_size, max_examples=max_eval_examples,
                                   output=os.path.join(work_dir, "eval", "metrics.json"),
                                   face_metrics=fm, log=log,
                                   overwrite=True)  # the benchmark's own scratch work_dir
    finally:
        if fm is not None:
            fm.close()
    metrics = {}
    for method, v in result["methods"].items():
        name = method[len(eval_lib.COMPARE_PREFIX):] if method.startswith(
            eval_lib.COMPARE_PREFIX) else method
        metrics[name] = v["overall"]
    order = [v.name for v in variants] + [b for b in BASELINES if b in metrics]
    keys = [k for k in eval_lib.METRIC_KEYS if any(metrics[n].get(k) is not None for n in order)]
    for r in runs:
        ckpt = result["checkpoints"].get(eval_lib.COMPARE_PREFIX + r.variant.name, {})
        if ckpt.get("step") is not None and ckpt["step"] != r.record["steps"]:
            raise RuntimeError(f"{r.variant.name}: evaluated checkpoint step {ckpt['step']} but "
                               f"the trainer logged {r.record['steps']} steps")
    return {
        "benchmark": "quality", "budget": budget, "budget_s": budget_s, "resolution": resolution,
        "batch_size": batch_size, "schedules": schedules, "max_steps": max_steps, "seed": seed,
        "parallel": parallel, "dataset": common.dataset_summary(info, data_dir),
        "num_test_examples": result["num_examples"],
        "variants": {r.variant.name: {"config": r.variant.config,
                                      "overrides": [f"{k}={v}" for k, v in r.variant.overrides],
                                      "model": resolved[r.variant.name].model.to_dict(),
                                      "run": r.record, "metrics": metrics[r.variant.name]}
                     for r in runs},
        "baselines": {b: metrics[b] for b in BASELINES if b in metrics},
        "metrics": {n: metrics[n] for n in order}, "order": order, "metric_keys": keys,
        "best": {"masked_psnr": best_by({k: metrics[k] for k in order}, "masked_psnr"),
                 "masked_ssim": best_by({k: metrics[k] for k in order}, "masked_ssim")},
        "evaluation": result["outputs"], "face_metrics": result.get("face_metrics"),
        "machine": common.machine_info(), "code": started,
        "code_at_end": common.code_state(),
    }
