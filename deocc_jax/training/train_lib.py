"""The training loop: data in, steps on the mesh, checkpoints, validation and progress out.

The step itself is pure and lives in `steps`; validation is `eval_lib.validate`
(the same code as the evaluate binary).

Resume order (documented because bit-exact resumption depends on it): build
the abstract train state, derive shardings, jit the init into that layout,
then, if a checkpoint exists, restore state and the grain iterator position
from the newest loadable checkpoint. Step `s` (0-based) uses dropout key
fold_in(key(seed), s) and the s-th global batch, so a resumed run computes
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util
from jax.sharding import Mesh

from deocc_jax import errors, models
from deocc_jax.artifacts import loading
from deocc_jax.evaluation import eval_lib
from deocc_jax.training import checkpointing, sharding, steps
from deocc_jax.data import features, input_pipeline
from deocc_jax.io import atomic, workdir_lock

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers treat it as "restart me"
CONFIG_FILE = "config.json"


class TrainingDivergedError(errors.UserError, FloatingPointError):
    """A loss or gradient became NaN/Inf; the message names the last good checkpoint."""


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300) -> None:
    """Calls jax.distributed.initialize; arguments left None are auto-detected.

    On Cloud TPU, SLURM and Open MPI JAX finds everything itself. On CPU it
    uses gloo collectives so multi-process CPU runs (and tests) work. `timeout_s`
    bounds both the wait for every process to join and the shutdown barrier, where
    a process that finished early waits for one still evaluating or saving.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s,
                               shutdown_timeout_seconds=timeout_s)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


# ---------------------------------------------------------------------------
# Set-up: modules, shardings and the jitted step for one config on one mesh.

@dataclasses.dataclass
class Setup:
    """Models, optimisers, shardings and the jitted step for one config on one mesh."""
    config: ml_collections.ConfigDict
    mesh: Mesh
    modules: steps.Modules
    schedules: dict[str, Callable[[int], Any]]
    abstract_state: steps.TrainState
    state_sharding: Any
    init: Callable[[], steps.TrainState]
    train_step: Callable


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Clear errors for settings that cannot work, before anything is built."""
    if config.batch_size <= 0 or config.batch_size % mesh.devices.size:
        raise errors.InvalidInputError(
            f"--config.batch_size={config.batch_size}: must be a positive multiple of the device "
            f"count {mesh.devices.size}")
    if not config.data_dir:
        raise errors.InvalidInputError(
            "config.data_dir is not set: pass --config.data_dir=DIR (a dataset written by "
            "`python -m data_prep.build`)")
    for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps"):
        if config[name] <= 0:
            raise errors.InvalidInputError(f"--config.{name}={config[name]}: must be positive")


def build_setup(config: ml_collections.ConfigDict, mesh: Mesh | None = None,
                generator_variables: dict | None = None) -> Setup:
    """Everything needed to train `config` on `mesh`, without touching data or disk.

    Args:
      config: the experiment config.
      mesh: the device mesh (default: every device).
      generator_variables: start G from these (`config.init_from`).
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    sharding.check_batch_size(config.batch_size, mesh, "config.batch_size")
    modules, schedules = steps.build_modules(config)
    init_fn = functools.partial(steps.init_state, config, modules,
                                generator_variables=generator_variables)
    # "rbg" keys for parameter init: XLA CPU compiles one threefry normal per
    # parameter very slowly (~1 s each); rbg is ~8x faster to compile and just
    # as deterministic. Dropout keys (steps.train_step) stay threefry, whose
    # values do not depend on how the computation is sharded.
    rng = jax.random.key(config.seed, impl="rbg")
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = jax.tree.map(
        sharding.param_sharding_rule(mesh, config.get("fsdp_min_params", 0)), abstract)
    step = functools.partial(steps.train_step, config=config, modules=modules)
    jit_step = jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, sharding.replicated(mesh)),
                       donate_argnums=0)
    jit_init = jax.jit(init_fn, out_shardings=state_sharding)
    return Setup(config=config, mesh=mesh, modules=modules, schedules=schedules,
                 abstract_state=abstract, state_sharding=state_sharding,
                 init=lambda: jit_init(rng), train_step=jit_step)


# ---------------------------------------------------------------------------
# Checkpoint items (names: see checkpointing.py).

def state_items(state: steps.TrainState) -> dict[str, Any]:
    """The named checkpoint items of a train state."""
    return {"g": state.g.variables(), "g_opt": state.g.opt_state, "ema": state.ema_params,
            "d": None if state.d is None else state.d.variables(),
            "d_opt": None if state.d is None else state.d.opt_state}


def abstract_items(setup: Setup) -> dict[str, Any]:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            setup.abstract_state, setup.state_sharding)
    return {k: v for k, v in state_items(abstract).items() if v is not None}


def state_from_items(setup: Setup, step: int, items: dict[str, Any]) -> steps.TrainState:
    def net(variables, opt_state):
        variables = dict(variables)
        return steps.NetState(params=variables.pop("params"), state=variables, opt_state=opt_state)

    put = functools.partial(jax.device_put, device=sharding.replicated(setup.mesh))
    return steps.TrainState(
        step=put(jnp.asarray(step, jnp.int32)), g=net(items["g"], items["g_opt"]),
        d=net(items["d"], items["d_opt"]) if "d" in items else None,
        ema_params=items.get("ema"), first_bad_step=put(jnp.asarray(-1, jnp.int32)))


def initial_generator(config: ml_collections.ConfigDict) -> dict | None:
    """Generator variables of `config.init_from` (a pretrained folder or workdir), or None.

    The architecture must match: fine-tuning changes data and losses, not the network.
    """
    path = config.get("init_from")
    if not path:
        return None
    source = loading.load_model(path)
    mine = jax.eval_shape(functools.partial(models.init_generator, config),
                          jax.random.key(0))
    theirs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), source.variables)
    if jax.tree.structure(mine) != jax.tree.structure(theirs) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs))):
        raise errors.InvalidInputError(
            f"--config.init_from={path}: its generator ({source.config.model.generator.to_dict()}) "
            "does not match this config's; fine-tune with the same model settings")
    logging.info("initialising the generator from %s", source.description)
    return source.variables


# ---------------------------------------------------------------------------
# Loop helpers.

class PreemptionFlag:
    """SIGTERM or SIGINT in single-process runs: save a checkpoint at the next step and stop.

    Both are `errors.StopSignals` requests, so Ctrl-C keeps the work done as a
    scheduler's SIGTERM does, and is never a KeyboardInterrupt unwinding the
    main thread while XLA computes. Multi-process runs use JAX's preemption
    service (SIGTERM) instead.
    """

    def __init__(self):
        self._signals = errors.StopSignals()
        self._active = False

    @property
    def is_set(self) -> bool:
        return self._signals.requested

    @property
    def signum(self) -> int | None:
        return self._signals.signum

    def __enter__(self):
        self._active = jax.process_count() == 1
        if self._active:
            self._signals.__enter__()
        return self

    def __exit__(self, *exc):
        if self._active:
            self._signals.__exit__(*exc)


class _Prefetcher:
    """Keeps `size` batches on device ahead of the step; remembers iterator states.

    The state paired with each batch is the iterator position right after it
    was drawn: what a checkpoint taken after training on it must store.
    """

    def __init__(self, iterator, put: Callable, size: int = 1):
        self._it, self._put, self._size = iterator, put, size
        self._queue: list = []

    def next(self) -> tuple[dict, dict]:
        while len(self._queue) <= self._size:
            batch = next(self._it)
            self._queue.append((self._put(batch), self._it.get_state()))
        return self._queue.pop(0)


class _Reporters:
    """TensorBoard scalars/images (clu metric writers) and progress (clu periodic actions).

    Only process 0 writes. clu pulls in TensorFlow, so it is imported here, when
    a run starts, rather than with the module.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, start: int):
        from clu import metric_writers, periodic_actions  # TensorFlow: only for a real run
        primary = jax.process_index() == 0
        self.writer = (metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
                       if primary else metric_writers.MultiWriter([]))
        self.actions = []
        if primary:
            self.actions.append(periodic_actions.ReportProgress(
                num_train_steps=config.num_train_steps, writer=self.writer,
                every_steps=config.log_every_steps, every_secs=None))
            if config.get("profile", False):
                self.actions.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                                             first_profile=start + 10))
        if primary and start == 0:
            flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
            self.writer.write_hparams({k: v for k, v in flat.items()
                                       if isinstance(v, (int, float, str, bool))})

    def step(self, step: int) -> None:
        for action in self.actions:
            action(step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if "://" in workdir:  # object stores (gs://...) replace an object in one step anyway
        (epath.Path(workdir) / CONFIG_FILE).write_text(text)  # writer-policy: exempt (object store)
    else:
        atomic.write_text(os.path.join(workdir, CONFIG_FILE), text, overwrite=True)  # resumes rewrite it


def _check_train_split(config: ml_collections.ConfigDict) -> None:
    """The train split exists, matches the config and holds records; checked before the workdir is touched."""
    input_pipeline.check_dataset(config, "train")
    if input_pipeline.split_size(config.data_dir, "train") == 0:
        raise errors.InvalidInputError(
            f"--config.data_dir={config.data_dir}: the train split holds no record, so there is "
            "nothing to train on (prepare the data again with photos in which a face is found)")


def _has_validation_data(config: ml_collections.ConfigDict) -> bool:
    """Whether validation can run: a warning (not an error) when its split is empty."""
    if config.eval_every_steps <= 0:
        return False
    input_pipeline.check_dataset(config, config.eval_split)  # missing shards stay an error
    if input_pipeline.split_size(config.data_dir, config.eval_split) > 0:
        return True
    logging.warning(
        "the %r split of %s is empty: training goes on without validation, so no checkpoint "
        "gets %s metrics and --checkpoint=best will mean the latest (set "
        "--config.eval_every_steps=0 to silence this)", config.eval_split, config.data_dir,
        checkpointing.BEST_METRIC)
    return False


# ---------------------------------------------------------------------------
# The loop.

def _lock_workdir(workdir: str, break_lock: bool) -> workdir_lock.WorkdirLock:
    """Process 0 locks the workdir for the whole run; every process learns whether it could."""
    lock = workdir_lock.WorkdirLock(workdir, break_lock=break_lock,
                                    enabled=jax.process_index() == 0)
    failure = None
    try:
        lock.acquire()
    except workdir_lock.WorkdirLockedError as e:
        failure = e
    if jax.process_count() > 1:
        # The others would otherwise wait forever for process 0 at the first collective.
        locked = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
        if not locked and failure is None:
            raise workdir_lock.WorkdirLockedError(
                f"--workdir {workdir}: process 0 could not lock it (see its message)")
    if failure is not None:
        raise failure
    return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       face_metrics: Any = None, *, break_lock: bool = False) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its newest loadable checkpoint.

    The workdir is locked for the run (`io.workdir_lock`: a second trainer is
    refused); config.json is written only once the config has been accepted,
    i.e. after any checkpoint restored into it.

    Args:
      config: experiment config (configs/*.py).
      workdir: directory for checkpoints, TensorBoard events, sample PNGs and config.json.
      face_metrics: a `face_metrics.FaceMetrics` for validation, or None.
      break_lock: take over a workdir lock written from another host (`--break_lock`).

    Returns:
      {"step": last step, "preempted": bool, "signal": the number of the signal
      that stopped it (SIGTERM for a preemption notice), "metrics": last logged train
      metrics, "eval": last validation metrics}.

    Raises:
      errors.UserError: missing data, wrong resolution, bad batch size, a
        workdir in use, checkpoints of another config.
      TrainingDivergedError: a loss or gradient became NaN/Inf (names the step
        and the last good checkpoint); checkpoints before it are kept.
    """
    mesh = sharding.make_mesh()
    check_config(config, mesh)
    _check_train_split(config)
    validation = _has_validation_data(config)
    lock = _lock_workdir(workdir, break_lock)
    try:
        # SIGTERM during set-up or compilation still ends in a clean save at the first step.
        with PreemptionFlag() as preempt:
            return _train_loop(config, workdir, mesh, preempt, face_metrics, validation)
    finally:
        lock.release()


def _train_loop(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                preempt: PreemptionFlag, face_metrics: Any, validation: bool) -> dict[str, Any]:
    primary = jax.process_index() == 0
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)

    train_iter = input_pipeline.make_train_iterator(config)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                      keep_best=config.keep_best_checkpoints,
                                      async_save=config.async_checkpointing)
    has_checkpoint = bool(ckpt.all_steps())
    setup = build_setup(config, mesh, None if has_checkpoint else initial_generator(config))
    try:
        restored = ckpt.restore_latest_valid(abstract_items(setup), train_iter)
    except BaseException:
        ckpt.close()
        raise
    # The last checkpoint known to hold a finite, undamaged state: the one just
    # restored if its checksums verified, then each one this run saves (saves
    # come after the finiteness check).
    last_good: int | None = None
    if restored is None:
        state, start = setup.init(), 0
        logging.info("starting from scratch in %s", workdir)
    else:
        start, items = restored
        state = state_from_items(setup, start, items)
        last_good = start if ckpt.verified.get(start) else None
        logging.info("resumed from checkpoint step %d in %s", start, ckpt.directory)
    # Only now is the config accepted: a refused resume leaves config.json as it was.
    if primary:
        _write_config(config, workdir)

    reporters = _Reporters(config, workdir, start)
    prefetch = _Prefetcher(train_iter, functools.partial(sharding.put_batch, mesh))
    result = {"step": start, "preempted": False, "signal": None, "metrics": {}, "eval": {}}
    pending: list[dict] = []
    num_steps = config.num_train_steps

    def check_finite():
        bad = int(jax.device_get(state.first_bad_step))
        if bad >= 0:
            if last_good is not None:
                good = f"the last good checkpoint is step {last_good} in {ckpt.directory}"
            elif restored is not None:
                good = (f"no checkpoint is known to be good: step {start}, resumed from, had no "
                        f"checksums to verify in {ckpt.directory}")
            else:
                good = "no checkpoint was saved before it"
            raise TrainingDivergedError(
                f"loss or gradient became NaN/Inf at step {bad}; stopping: {good}")

    try:
        for step in range(start, num_steps):
            batch, data_state = prefetch.next()
            state, step_metrics = setup.train_step(state, batch)
            pending.append(step_metrics)
            done = step + 1
            if done % config.log_every_steps == 0 or done == num_steps:
                check_finite()
                means = {k: float(np.mean(v)) for k, v in
                         jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *pending)).items()}
                pending = []
                means.update({k: float(s(done - 1)) for k, s in setup.schedules.items()})
                reporters.writer.write_scalars(done, means)
                result["metrics"] = means
                if primary:
                    logging.info("step %d/%d | %s", done, num_steps,
                                 " ".join(f"{k} {v:.4g}" for k, v in means.items()))
            # After the log step's device_get: steps/s and ETA then count computed steps,
            # not steps merely dispatched (JAX runs ahead of the device asynchronously).
            reporters.step(done)
            eval_metrics = None
            if validation and (done % config.eval_every_steps == 0 or done == num_steps):
                eval_metrics, grid = eval_lib.validate(mesh, config, steps.eval_variables(state),
                                                       face_metrics=face_metrics)
                result["eval"] = eval_metrics
                reporters.writer.write_scalars(done, eval_metrics)
                if primary:
                    logging.info("eval step %d | %s", done,
                                 " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                    if grid is not None:
                        _write_samples(workdir, done, grid, reporters.writer)
            preempted = preempt.is_set or ckpt.reached_preemption(done)
            if done % config.checkpoint_every_steps == 0 or done == num_steps or preempted:
                check_finite()
                ckpt.save(done, state_items(state), data_state=data_state, config=config,
                          metrics=eval_metrics)
                last_good = done
            result["step"] = done
            if preempted:
                ckpt.wait()
                result["signal"] = preempt.signum or signal.SIGTERM
                logging.warning("preempted: saved checkpoint at step %d in %s; exiting so the "
                                "job can be restarted (it will resume from there)",
                                done, ckpt.directory)
                result["preempted"] = True
                break
    finally:
        ckpt.wait()
        ckpt.close()
        reporters.close()
    return result


def _write_samples(workdir: str, step: int, grid: np.ndarray, writer) -> None:
    png = features.encode_png(grid)
    if "://" in workdir:
        path = epath.Path(workdir) / "samples"
        path.mkdir(parents=True, exist_ok=True)
        (path / f"step_{step:08d}.png").write_bytes(png)  # writer-policy: exempt (object store)
    else:
        # A resume redoes the steps after its checkpoint, and with them their grids.
        atomic.write_bytes(os.path.join(workdir, "samples", f"step_{step:08d}.png"), png,
                           overwrite=True)
    writer.write_images(step, {"samples": grid[None]})
