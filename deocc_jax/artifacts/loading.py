"""Trained generators on disk: training workdirs and deocc's pretrained-model folders.

    model = load_model("runs/a", checkpoint="best")    # or "pretrained/deocc-realtime-128"
    model.config, model.variables, model.step

A *workdir* holds orbax checkpoints (`train_lib` writes them); `checkpoint`
picks "latest", "best" (highest validation SSIM) or a step. A *pretrained
folder* is what deocc ships and fine-tunes from (`--config.init_from=DIR`):

    deocc_model.json     format, name, step, resolution, mode, parameter dtype, sha256
    config.json          the training config
    generator.msgpack    generator variables (flax msgpack; float16 to keep the repo small)
    export/<step>/       the SavedModel (TF Serving, `infer`)

Both load to float32 variables on the default device.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deocc_jax import errors, models
from deocc_jax.io import assets
from deocc_jax.training import checkpointing
from deocc_jax.io import atomic

PRETRAINED_FILE = "deocc_model.json"
PRETRAINED_FORMAT = 1
VARIABLES_FILE = "generator.msgpack"
CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"  # written by hand from the folder's metrics
CHECKPOINT_CHOICES = "'latest', 'best' or a step number"


def parse_checkpoint(value: str | int) -> str | int:
    """A --checkpoint value: "latest", "best" or a non-negative step number."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    if value in ("latest", "best"):
        return value
    raise errors.InvalidInputError(f"--checkpoint={value!r}: expected {CHECKPOINT_CHOICES}")


@dataclasses.dataclass
class LoadedModel:
    """A generator ready to run: its config, float32 variables and the step they are from."""
    config: ml_collections.ConfigDict
    variables: dict
    step: int
    path: str
    kind: str  # "workdir" | "pretrained"

    @property
    def description(self) -> str:
        return f"{self.kind} {self.path} (step {self.step}, {self.config.model.mode})"


def is_pretrained(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PRETRAINED_FILE))


def _abstract_variables(config: ml_collections.ConfigDict, sharding=None):
    shapes = jax.eval_shape(functools.partial(models.init_generator, config), jax.random.key(0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def load_model(path: str, checkpoint: str | int = "latest") -> LoadedModel:
    """Restores the generator of a workdir or a pretrained folder.

    Args:
      path: a training workdir (holds `checkpoints/`) or a pretrained folder.
      checkpoint: for workdirs, "latest", "best" or a step number.

    Returns:
      A LoadedModel; for workdirs with an EMA the EMA params replace the raw
      ones. Checkpoints written with any number of devices or processes load.

    Raises:
      errors.InputNotFoundError: no such folder, checkpoint or model file.
      errors.InvalidInputError: a pretrained folder whose files do not match.
    """
    if not os.path.isdir(path):
        raise errors.InputNotFoundError(f"{path}: no such model folder (a training workdir or a "
                                        "pretrained folder)")
    if is_pretrained(path):
        return _load_pretrained(path)
    if not os.path.isdir(checkpointing.checkpoint_dir(path)):
        raise errors.InputNotFoundError(
            f"{path}: not a model: neither a training workdir (no checkpoints/) nor a pretrained "
            f"folder (no {PRETRAINED_FILE})")
    ckpt = checkpointing.Checkpointer(path, read_only=True)
    try:
        step = ckpt.resolve(checkpoint)
        config = ckpt.restore_config(step)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = _abstract_variables(config, device)
        items = {"g": abstract}
        if ckpt.has_item(step, "ema"):
            items["ema"] = abstract["params"]
        restored = ckpt.restore(step, items)
    finally:
        ckpt.close()
    variables = dict(restored["g"])
    if "ema" in restored:
        variables["params"] = restored["ema"]
    return LoadedModel(config, variables, int(step), path, "workdir")


def _load_pretrained(path: str) -> LoadedModel:
    with open(os.path.join(path, PRETRAINED_FILE)) as f:
        meta = json.load(f)
    if meta.get("format") != PRETRAINED_FORMAT:
        raise errors.InvalidInputError(f"{path}/{PRETRAINED_FILE}: format {meta.get('format')!r}, "
                                       f"this deocc reads format {PRETRAINED_FORMAT}")
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = ml_collections.ConfigDict(json.load(f))
    var_path = os.path.join(path, VARIABLES_FILE)
    if not os.path.isfile(var_path):
        raise errors.InputNotFoundError(f"{var_path}: missing (the model's parameters)")
    if assets.sha256_file(var_path) != meta["sha256"]:
        raise errors.InvalidInputError(f"{var_path}: sha256 differs from {PRETRAINED_FILE}: the "
                                       "file is damaged or was replaced")
    abstract = _abstract_variables(config)
    with open(var_path, "rb") as f:
        stored = flax.serialization.msgpack_restore(f.read())
    try:
        variables = jax.tree.map(lambda a, x: jnp.asarray(np.asarray(x, np.float32)).reshape(a.shape),
                                 abstract, stored)
    except (ValueError, TypeError) as e:
        raise errors.InvalidInputError(f"{var_path}: parameters do not match {CONFIG_FILE} ({e})") from None
    return LoadedModel(config, variables, int(meta["step"]), path, "pretrained")


def save_pretrained(directory: str, config: ml_collections.ConfigDict, variables: dict, step: int,
                    *, name: str, dtype: str = "float16",
                    overwrite: bool = False) -> dict[str, Any]:
    """Writes `variables` (cast to `dtype`), config and metadata as a pretrained folder.

    Each file is written atomically (`io.atomic`); deocc_model.json, which
    holds the parameters' SHA-256, comes last, so a folder cut short is never
    taken for a pretrained model.

    Args:
      overwrite: replace the files of a pretrained model already in `directory`.

    Returns:
      The metadata written to deocc_model.json.

    Raises:
      errors.OutputExistsError: one of the files exists and not `overwrite`.
    """
    files = [(VARIABLES_FILE, os.path.join(directory, VARIABLES_FILE)),
             (CONFIG_FILE, os.path.join(directory, CONFIG_FILE)),
             (PRETRAINED_FILE, os.path.join(directory, PRETRAINED_FILE))]
    atomic.plan_outputs(files, overwrite=overwrite)
    stored = jax.tree.map(lambda x: np.asarray(x).astype(dtype), jax.device_get(variables))
    data = flax.serialization.msgpack_serialize(stored)
    atomic.write_bytes(files[0][1], data, overwrite=overwrite)
    atomic.write_text(files[1][1], config.to_json_best_effort(indent=2, sort_keys=True) + "\n",
                      overwrite=overwrite)
    meta = {"format": PRETRAINED_FORMAT, "name": name, "step": int(step),
            "resolution": int(config.resolution), "mode": config.model.mode,
            "param_dtype": dtype, "num_params": int(sum(x.size for x in jax.tree.leaves(stored))),
            "sha256": hashlib.sha256(data).hexdigest()}
    atomic.write_text(files[2][1], json.dumps(meta, indent=2, sort_keys=True) + "\n",
                      overwrite=overwrite)
    return meta


def replace_keeping_card(new: str, out: str, log=print) -> None:
    """Moves the pretrained folder `new` to `out`, replacing it but keeping its hand-written card.

    Shipping a model means replacing the one shipped before: `out` is swapped
    for `new` in one step where Linux allows it (`atomic.publish_directory`).
    """
    card = os.path.join(out, CARD_FILE)
    if os.path.exists(card):
        atomic.copy_file(card, os.path.join(new, CARD_FILE), overwrite=True)
        log(f"kept {card} from the version replaced: update its numbers from metrics.md")
    atomic.publish_directory(new, out, replace=True)
