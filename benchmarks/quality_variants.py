"""What `benchmarks.quality` trains: variants (a config file and dotted overrides), parsed by the
trainer's own config parser before anything runs, and the trainer command line of each.

--configs=NAME[,...] entries are configs/NAME.py or a config file PATH[:ARG], named after the
file (and ARG); --variant=NAME=PATH[:ARG][,KEY=VALUE...] entries name a config file with dotted
overrides, given to the trainer as --config.KEY=VALUE (VALUEs cannot contain commas).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from benchmarks import common

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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
