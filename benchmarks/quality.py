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
Then `deocc_jax.eval_lib.evaluate` evaluates all of them in one pass over the test split next to
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

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from deocc_jax import eval_lib, face_metrics  # noqa: E402
from deocc_jax.data import features  # noqa: E402

BUDGETS = ("cpu", "wall")
DEFAULT_CONFIGS = ("unet_l1", "pix2pix", "deocc")
PRIMARY_METRICS = ("psnr", "ssim", "mse", "masked_psnr", "masked_ssim", "masked_mse", "mask_iou")
BASELINES = ("occluded_input", "opencv_telea", "opencv_ns")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def define_flags() -> None:
    """The binary's absl flags (defined only when run as a program, so that importing this
    module next to other benchmarks and tests defines no flags)."""
    flags.DEFINE_list("configs", list(DEFAULT_CONFIGS),
                      "Configs to train: NAME (configs/NAME.py) or PATH[:ARG]; '' = none.")
    flags.DEFINE_multi_string("variant", [], "NAME=PATH[:ARG][,KEY=VALUE...]: a config file "
                              "with dotted overrides (repeatable).")
    flags.DEFINE_enum("budget", "cpu", list(BUDGETS), "What --budget_s counts: CPU-seconds of "
                      "the training process (all threads) or wall-clock seconds.")
    flags.DEFINE_float("budget_s", 1800.0, "Seconds of training per variant (after its first step).")
    flags.DEFINE_integer("parallel", 1, "Variants trained at the same time (each in its own "
                         "process; fair under --budget=cpu).")
    flags.DEFINE_integer("batch_size", 8, "Training batch size (all variants).")
    flags.DEFINE_integer("resolution", 128, "Crop size of data and models.")
    flags.DEFINE_integer("max_steps", 100_000, "num_train_steps given to the trainer.")
    flags.DEFINE_enum("schedules", "budget", ["budget", "config"],
                      "budget: constant lr, no warm-up, no EMA; config: as configured.")
    flags.DEFINE_bool("face_metrics", False, "Also the face-aware metrics (expression, "
                      "landmarks, identity; MediaPipe, identity needs requirements-eval.txt).")
    flags.DEFINE_integer("eval_batch_size", 32, "Evaluation batch.")
    flags.DEFINE_integer("max_eval_examples", None, "Evaluate on the first n test examples "
                         "(face metrics cost ~0.1 s per example and method).")
    common.define_data_flags()
    flags.adopt_module_key_flags(common)  # list them in this binary's --help
    flags.DEFINE_string("work_dir", "/tmp/deocc_bench/quality",
                        "Workdirs, logs and the evaluation go here (replaced).")
    flags.DEFINE_float("startup_timeout_s", 1800.0,
                       "Give up on a trainer that logs no step in this many wall seconds.")
    flags.DEFINE_integer("seed", 0, "Training seed (all variants).")
    flags.DEFINE_string("note", "", "A sentence printed under the table (e.g. what the run was).")
    flags.DEFINE_string("output", "", "JSON file to write; the Markdown table goes beside it.")


# ----------------------------------------------------------------------------- what is trained


@dataclasses.dataclass(frozen=True)
class Variant:
    """One thing to train: a config file (with its get_config argument) and dotted overrides."""
    name: str
    config: str                                  # "configs/deocc.py" or "configs/deocc.py:runlocal"
    overrides: tuple[tuple[str, str], ...] = ()


def _config_path(spec: str) -> str:
    """"deocc" -> "configs/deocc.py"; paths (with an optional :ARG) are kept."""
    path, sep, arg = spec.partition(":")
    if not path.endswith(".py") and "/" not in path:
        path = os.path.join("configs", path + ".py")
    return path + sep + arg


def variant_from_config(spec: str) -> Variant:
    """A --configs entry: NAME or PATH[:ARG], named after the file (and ARG)."""
    config = _config_path(spec.strip())
    path, _, arg = config.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f"-{arg}" if arg else "")
    return Variant(name, config)


def parse_variant(spec: str) -> Variant:
    """A --variant value: NAME=PATH[:ARG][,KEY=VALUE...].

    Raises:
      ValueError: malformed spec (the message quotes it).
    """
    name, sep, rest = spec.partition("=")
    parts = rest.split(",")
    if not sep or not name or not _NAME.match(name) or not parts[0]:
        raise ValueError(f"--variant={spec!r}: expected NAME=PATH[:ARG][,KEY=VALUE...] with NAME "
                         "made of letters, digits, '_', '-', '.'")
    overrides = []
    for item in parts[1:]:
        key, eq, value = item.partition("=")
        if not eq or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise ValueError(f"--variant={spec!r}: override {item!r} is not KEY=VALUE with a "
                             "dotted KEY")
        overrides.append((key, value))
    return Variant(name, _config_path(parts[0]), tuple(overrides))


def collect_variants(configs: Sequence[str], variant_specs: Sequence[str]) -> list[Variant]:
    """--configs then --variant entries; names must be unique (they name the workdirs)."""
    variants = [variant_from_config(c) for c in configs if c.strip()]
    variants += [parse_variant(v) for v in variant_specs]
    if not variants:
        raise ValueError("nothing to train: give --configs and/or --variant")
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique, repeated: {dup} (name --variant entries)")
    return variants


def trainer_command(variant: Variant, workdir: str, data_dir: str, *, resolution: int,
                    batch_size: int, max_steps: int, schedules: str, seed: int) -> list[str]:
    """The `deocc_jax.train` command line for one variant of the comparison."""
    cmd = [sys.executable, "-m", "deocc_jax.train", f"--config={variant.config}",
           f"--workdir={workdir}"]
    return cmd + config_overrides(variant, data_dir, resolution=resolution, batch_size=batch_size,
                                  max_steps=max_steps, schedules=schedules, seed=seed)


def config_overrides(variant: Variant, data_dir: str, *, resolution: int, batch_size: int,
                     max_steps: int, schedules: str, seed: int) -> list[str]:
    """The --config.KEY=VALUE arguments: the comparison's settings, then the variant's own."""
    args = [f"--config.data_dir={data_dir}", f"--config.resolution={resolution}",
            f"--config.batch_size={batch_size}", f"--config.num_train_steps={max_steps}",
            f"--config.seed={seed}",
            # One log line per step: the budget clock starts at the first one, and the CPU time
            # at every step is known. No validation or face metrics during training: the test
            # split is evaluated once at the end, the same way for every variant.
            "--config.log_every_steps=1", "--config.eval_every_steps=0",
            "--config.eval_face_metrics=False",
            f"--config.checkpoint_every_steps={max_steps}", "--config.keep_best_checkpoints=0"]
    if schedules == "budget":
        for opt in ("g", "d"):
            args += [f"--config.optim.{opt}.schedule=constant",
                     f"--config.optim.{opt}.warmup_steps=0"]
        args.append("--config.optim.ema_decay=0.0")
    return args + [f"--config.{k}={v}" for k, v in variant.overrides]


def resolve_config(config: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config the trainer will build from `--config=<config>` and `overrides`, parsed by
    the same ml_collections config_flags parser.

    Raises:
      ValueError: a missing file, a key the config lacks or a value of the wrong type.
    """
    # Relative config paths are relative to the repository, where the trainer runs.
    path, sep, arg = config.partition(":")
    full = path if os.path.isabs(path) else os.path.join(common.REPO, path)
    if not os.path.isfile(full):
        raise ValueError(f"--config={config}: no such config file ({full})")
    argv = ["quality", f"--config={full}{sep}{arg}", *overrides]
    fv = flags.FlagValues()
    try:
        # sys_argv: config_flags defines the --config.KEY flags it finds there.
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                        sys_argv=argv)
        fv(argv)
        return fv["config"].value
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        cause = e
        while cause is not None and not isinstance(cause, KeyError):
            cause = cause.__cause__ or cause.__context__
        detail = (f"the config has no key: {cause.args[0] if cause.args else cause}"
                  if cause is not None else str(e))
        raise ValueError(f"--config={config}: {detail}") from None


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


def resolve_variants(variants: Sequence[Variant], data_dir: str,
                     **kwargs) -> dict[str, ml_collections.ConfigDict]:
    """Each variant's config as its trainer will see it (`config_overrides` kwargs).

    Raises:
      ValueError: naming the variant whose spec is bad.
    """
    resolved = {}
    for v in variants:
        try:
            resolved[v.name] = resolve_config(v.config, config_overrides(v, data_dir, **kwargs))
        except ValueError as e:
            own = ",".join(f"{k}={val}" for k, val in v.overrides)
            raise ValueError(f"variant {v.name!r} ({v.config}{',' + own if own else ''}): "
                             f"{e}") from None
    return resolved


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
                                   face_metrics=fm, log=log)
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


def main(argv):
    del argv
    F = flags.FLAGS
    try:
        variants = collect_variants(F.configs, F.variant)
        # Before the data set is prepared (minutes): a typo in a spec fails at once.
        resolve_variants(variants, F.data_dir, resolution=F.resolution, batch_size=F.batch_size,
                         max_steps=F.max_steps, schedules=F.schedules, seed=F.seed)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    common.prepare_dataset(F.data_dir, photos_dir=F.photos, max_photos=F.max_photos,
                           resolution=F.resolution, occluders_dir=F.occluders_dir or None)
    rec = run_benchmark(variants, budget=F.budget, budget_s=F.budget_s, data_dir=F.data_dir,
                        work_dir=F.work_dir, resolution=F.resolution, batch_size=F.batch_size,
                        max_steps=F.max_steps, schedules=F.schedules, seed=F.seed,
                        parallel=F.parallel, startup_timeout_s=F.startup_timeout_s,
                        face_metrics_on=F.face_metrics, eval_batch_size=F.eval_batch_size,
                        max_eval_examples=F.max_eval_examples)
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
