"""Checkpoints under `{workdir}/checkpoints/{step}/`, via one orbax CheckpointManager.

Everything orbax-specific lives here so a move to a newer orbax API stays local.
A checkpoint is a composite of named items:

  g       generator variables {"params", "batch_stats"?}
  ema     EMA of the generator params (when enabled)
  g_opt   generator optimiser state
  d       discriminator variables (when there is a discriminator)
  d_opt   discriminator optimiser state
  data    the grain iterator position, one JSON file per process
  config  the experiment config as JSON, so a checkpoint is self-describing

Saves are asynchronous (arrays are copied to host before `save` returns, so
donating the train state afterwards is safe). The last `keep` checkpoints
plus the `keep_best` best by validation SSIM are kept. Orbax writes each step
to a temporary directory and renames it when complete, so a half-written save
is never mistaken for a checkpoint; a complete-looking one that fails to load
is moved aside with a warning and the previous one is used.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import grain
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from deocc_jax import errors

BEST_METRIC = "val_ssim"
CHECKPOINT_SUBDIR = "checkpoints"


class _IteratorState:
    """Adapter giving grain's checkpoint handler a state captured earlier.

    The loop prefetches batches, so the live iterator is ahead of what the
    model has consumed; the state to save is the one recorded when the last
    consumed batch was drawn.
    """

    def __init__(self, state: Mapping[str, Any]):
        self._state = dict(state)

    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=2, sort_keys=True).encode()


def checkpoint_dir(workdir: str) -> str:
    """`{workdir}/checkpoints`, absolute: orbax refuses relative local paths (gs:// stays as is)."""
    if "://" not in workdir:
        workdir = os.path.abspath(workdir)
    return os.path.join(workdir, CHECKPOINT_SUBDIR)


class Checkpointer:
    """Saves and restores deocc train state; one per training run.

    Args:
      workdir: experiment directory; checkpoints go to `{workdir}/checkpoints`.
      keep: number of most recent checkpoints to keep.
      keep_best: number of best checkpoints (by `val_ssim`) to keep in addition.
      async_save: write in a background thread.
      read_only: never write or delete (inference, evaluation).
    """

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best > 0:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=keep_best,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- queries -----------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Step with the highest saved val_ssim, or None if no checkpoint has metrics."""
        best, best_value = None, None
        for step in self.all_steps():
            m = self._manager.metrics(step)
            if m and BEST_METRIC in m and (best_value is None or m[BEST_METRIC] > best_value):
                best, best_value = step, m[BEST_METRIC]
        return best

    def resolve(self, checkpoint: str | int) -> int:
        """Step number for "latest", "best" or an int; FileNotFoundError if absent."""
        if checkpoint == "latest":
            step = self.latest_step()
        elif checkpoint == "best":
            step = self.best_step()
            if step is None:
                raise errors.InputNotFoundError(
                    f"{self.directory}: no checkpoint has {BEST_METRIC} metrics (validation never "
                    "ran); use --checkpoint=latest")
        else:
            step = int(checkpoint)
            if step not in self.all_steps():
                step = None
        if step is None:
            raise errors.InputNotFoundError(f"{self.directory}: checkpoint {checkpoint!r} not found "
                                            f"(available steps: {self.all_steps()})")
        return step

    def has_item(self, step: int, name: str) -> bool:
        return (epath.Path(self.directory) / str(step) / name).is_dir()

    def reached_preemption(self, step: int) -> bool:
        """True at the step all processes agree to stop at after a preemption notice.

        Only meaningful under `jax.distributed` (JAX's preemption service
        listens for SIGTERM); single-process runs use `PreemptionFlag`.
        """
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    # -- save / restore ----------------------------------------------------
    def save(self, step: int, items: Mapping[str, Any], *, data_state: Mapping[str, Any] | None,
             config: ml_collections.ConfigDict, metrics: Mapping[str, float] | None = None) -> None:
        """Starts an (async) save of `items` (name -> pytree; None entries skipped)."""
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items() if tree is not None}
        if data_state is not None:
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data_state))
        args["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
        self._manager.save(step, args=ocp.args.Composite(**args),
                           metrics=dict(metrics) if metrics else None, force=True)

    def restore(self, step: int, abstract_items: Mapping[str, Any],
                data_iterator: Any = None) -> dict[str, Any]:
        """Restores the named items of `step` into the layouts of `abstract_items`.

        Args:
          step: checkpoint step.
          abstract_items: name -> pytree of jax.ShapeDtypeStruct (with the
            shardings wanted now, so a checkpoint from any device count loads).
          data_iterator: a grain DatasetIterator to set to the saved position.
        """
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return {name: restored[name] for name in abstract_items}

    def restore_config(self, step: int) -> ml_collections.ConfigDict:
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return ml_collections.ConfigDict(restored["config"])

    def restore_latest_valid(self, abstract_items: Mapping[str, Any],
                             data_iterator: Any = None) -> tuple[int, dict[str, Any]] | None:
        """Restores the newest checkpoint that loads; None if there are no checkpoints.

        Newer checkpoints that fail to load while an older one loads are
        corrupt (truncated or damaged files): each is logged as a warning and
        moved to `{step}.corrupt-{time}` so training re-saves that step cleanly.

        Raises:
          RuntimeError: no checkpoint loads at all, which usually means the
            workdir belongs to a different model config (nothing is renamed).
        """
        failed = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                restored = self.restore(step, abstract_items, data_iterator)
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                logging.warning("checkpoint %s cannot be restored (%s); trying the previous one",
                                os.path.join(self.directory, str(step)), msg)
                failed.append((step, msg))
                continue
            for bad, _ in failed:
                self._quarantine(bad)
            return step, restored
        if failed:
            raise RuntimeError(
                f"none of the checkpoints in {self.directory} can be restored into this config "
                f"(newest, step {failed[0][0]}: {failed[0][1]}). They are corrupt or, more likely, "
                "were written with a different model config: use a new --workdir or the original "
                "config. Nothing was renamed or deleted.")
        return None

    def _quarantine(self, step: int) -> None:
        src = epath.Path(self.directory) / str(step)
        if jax.process_index() == 0 and src.exists():
            src.rename(src.parent / f"{step}.corrupt-{int(time.time())}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"deocc_quarantine_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
