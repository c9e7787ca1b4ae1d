"""Builds a deocc training set (the library of `python -m data_prep.build`).

Face photos in, occluded/clean pairs out (TFRecord + ArrayRecord shards,
dataset_info.json, rejected.tsv, contact_sheet.png): `build_dataset` checks
every option first, holds the output folder's lock, runs the Beam pipeline
(data_prep.pipeline) into a hidden sibling folder and moves it into place only
when complete. See data_prep/build.py for the safety rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from data_prep import config as config_lib
from data_prep import alignment, occluders, pipeline, sources, synth
from deocc_jax import errors
from deocc_jax.io import assets
from deocc_jax.data import features
from deocc_jax.io import atomic

PrepConfig = config_lib.PrepConfig

_OUTPUT_PATTERNS = (".tfrecord-", ".array_record-")
_METADATA = (features.DATASET_INFO, "rejected.tsv", pipeline.CONTACT_SHEET, features.BUILDING_MARKER)

class OutputLockedError(errors.OutputExistsError):
    """Another build is writing the same output folder."""


class EmptyDatasetError(errors.InvalidInputError):
    """The inputs gave no record, or none in the train split (nothing could train on it)."""


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """Value of --name=value or --name value in a Beam argument list, else None."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def default_pipeline_args(pipeline_args: Sequence[str], num_sources: int) -> list[str]:
    """Adds DirectRunner defaults: in-process, unless told otherwise.

    Why not every core in worker processes: on the full LFW+UTKFace build (8,000
    photos, 31k records) DirectRunner's multi-processing mode lost 4,476 records
    between synthesis and the shard writers (the build now fails on such a loss,
    see pipeline.check_records). In-process it wrote all of them, and on 2 cores
    it was not slower (8.7 vs 8 minutes under load). `--direct_running_mode=
    multi_processing` still opts in; Dataflow and other runners are unaffected.
    """
    del num_sources  # the default no longer depends on the input size
    args = list(pipeline_args)
    runner = _flag_value(args, "--runner") or "DirectRunner"
    if runner.lower() not in ("directrunner", "direct"):
        return args
    mode = _flag_value(args, "--direct_running_mode")
    workers = _flag_value(args, "--direct_num_workers")
    if mode is None and workers is None:
        args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    elif workers is None and mode != "in_memory":
        args += ["--direct_num_workers=0"]
    return args


def _check_paths(inputs: Sequence[str], output_dir: str, c: PrepConfig, num_shards: int | None) -> None:
    """Every flag that names a file, checked before anything is read or written."""
    if num_shards is not None and num_shards < 1:
        raise errors.InvalidInputError(f"--num_shards: must be a positive number of shards per split, "
                                       f"got {num_shards}")
    if not output_dir:
        raise errors.InvalidInputError("--output_dir: required")
    if c.occluders_dir and not os.path.isdir(c.occluders_dir) and "://" not in c.occluders_dir:
        raise errors.InputNotFoundError(f"--occluders_dir {c.occluders_dir!r} does not exist")
    if c.clean_dir and not os.path.isdir(c.clean_dir) and "://" not in c.clean_dir:
        raise errors.InputNotFoundError(f"--clean_dir {c.clean_dir!r} does not exist")
    if "://" in output_dir:
        return
    out = os.path.realpath(output_dir)
    for spec in list(inputs) + [c.clean_dir or ""]:
        if not spec or spec.startswith("tfds:") or "://" in spec:
            continue
        root = os.path.realpath(sources._split_glob(spec)[0])
        if out == root or out.startswith(root + os.sep):
            raise errors.OutputExistsError(
                f"--output_dir {output_dir!r} is inside the input {spec!r}; a later build would "
                "read its shards as photos: choose a folder outside the input")
        if root.startswith(out + os.sep):
            raise errors.OutputExistsError(
                f"--output_dir {output_dir!r} contains the input {spec!r}; replacing it would "
                "delete the photos: choose another folder")


def _existing_dataset(output_dir: str) -> list[str]:
    """Names of dataset files in output_dir; raises if it holds anything else."""
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise errors.OutputExistsError(f"--output_dir {output_dir!r} exists and is not a folder")
        return []
    names = sorted(os.listdir(output_dir))
    ours = [n for n in names if any(p in n for p in _OUTPUT_PATTERNS) or n in _METADATA]
    other = [n for n in names if n not in ours]
    if other:
        raise errors.OutputExistsError(
            f"--output_dir {output_dir!r} holds files that are not part of a deocc dataset (e.g. "
            f"{other[0]!r}); choose an empty or new folder")
    return ours


# ----------------------------------------------------------------------------
# Output folder: lock, build into a sibling, replace only when complete.
# ----------------------------------------------------------------------------

def lock_path(output_dir: str) -> str:
    parent, name = os.path.split(os.path.normpath(os.path.abspath(output_dir)))
    return os.path.join(parent, f".{name}.lock")


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Holds the build lock of `output_dir` (flock: released if the process dies).

    Raises:
      OutputLockedError: another live build holds it (named in the message).
    """
    path = lock_path(output_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # writer-policy: exempt (a lock file, flock'd in place; its text only names the holder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                with open(path) as f:
                    h = json.load(f)
                who = f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"
            except (OSError, ValueError):
                who = "another process"
            raise OutputLockedError(
                f"--output_dir {output_dir!r} is being built by another data_prep run ({who}); "
                f"wait for it to finish (lock: {path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (deleting it would race)


def _remove_leftovers(output_dir: str) -> None:
    """Deletes folders of earlier builds of output_dir that died (we hold the lock)."""
    for d in sorted(glob.glob(glob.escape(features.building_prefix(output_dir)) + "*")):
        logging.warning("data_prep: removing %s, left by an earlier build that did not finish", d)
        shutil.rmtree(d, ignore_errors=True)


def _check_written(folder: str, info: dict) -> None:
    """Every split's shards are present and complete (what readers will check)."""
    for split in info["splits"]:
        for fmt in ("tfrecord", "array_record"):
            features.list_shards(folder, split, fmt)


def _install(tmp: str, output_dir: str) -> None:
    """Moves the finished, checked build into place, replacing an old dataset only now.

    An existing `output_dir` was refused without --overwrite (or checked to be
    an empty folder or a dataset) under the build lock, before the build: here
    it is swapped for the new one in a single step where Linux allows it.
    """
    atomic.publish_directory(tmp, output_dir, replace=True)


def _install_remote(tmp: str, output_dir: str) -> None:
    """Remote filesystems have no folder rename: delete the old files, then move the new ones."""
    FileSystems.delete([FileSystems.join(tmp, features.BUILDING_MARKER)])
    if FileSystems.exists(output_dir):
        old = [m.path for m in FileSystems.match([FileSystems.join(output_dir, "*")])[0].metadata_list
               if any(p in os.path.basename(m.path) for p in _OUTPUT_PATTERNS)
               or os.path.basename(m.path) in _METADATA]
        if old:
            FileSystems.delete(old)
    new = [m.path for m in FileSystems.match([FileSystems.join(tmp, "*")])[0].metadata_list]
    FileSystems.rename(new, [FileSystems.join(output_dir, os.path.basename(p)) for p in new])
    FileSystems.delete([tmp])


def _sources(inputs: Sequence[str], c: PrepConfig, manual_dir: str | None, tfds_data_dir: str | None):
    """(sources, skipped, tfds spec or None, info about the inputs)."""
    tfds_inputs = [i for i in inputs if i.startswith("tfds:")]
    if tfds_inputs:
        if len(inputs) != 1 or c.clean_dir:
            raise errors.InvalidInputError("--input: a tfds:NAME input cannot be combined with other "
                                           "inputs or --clean_dir")
        name, _, split = tfds_inputs[0][len("tfds:"):].partition(":")
        split = split or "train"
        n, image_key = pipeline.prepare_tfds(name, split, tfds_data_dir, manual_dir)
        found = [sources.Source(pipeline.tfds_source_id(name, split, i), ("tfds", name, split, i))
                 for i in range(n)]
        spec = {"name": name, "split": split, "data_dir": tfds_data_dir, "image_key": image_key}
        return found, [], spec, {"inputs": list(inputs)}
    found, skipped = sources.list_sources(inputs, c.group_by)
    info: dict[str, Any] = {"inputs": list(inputs)}
    if c.clean_dir:
        found, unpaired, unused = sources.pair_sources(found, c.clean_dir, c.group_by)
        skipped += unpaired
        info["paired"] = {"clean_dir": c.clean_dir, "clean_photos_unmatched": unused}
    return found, skipped, None, info


def build_dataset(input: str | Sequence[str], output_dir: str,  # noqa: A002 - the flag's name
                  config: PrepConfig | None = None, *, pipeline_args: Sequence[str] = (),
                  num_shards: int | None = None, manual_dir: str | None = None,
                  tfds_data_dir: str | None = None, overwrite: bool = False,
                  **overrides: Any) -> dict:
    """Runs the data-prep pipeline and returns the written dataset_info.json.

    Args:
      input: a folder, glob or "tfds:NAME[:SPLIT]", or several folders/globs
        (a list, or one comma-separated string); with several, ids are
        prefixed with each input's folder name.
      output_dir: destination (local path or a Beam filesystem such as gs://).
      config: the records to make; default PrepConfig().
      pipeline_args: Beam options, e.g. ["--runner=DataflowRunner", ...] or
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"].
        DirectRunner default: in-process (see `default_pipeline_args`).
      num_shards: shards per split (default: ~128 MiB each).
      manual_dir, tfds_data_dir: TFDS options for tfds: inputs.
      overwrite: replace an existing dataset in output_dir (only once the new
        one is complete).
      **overrides: PrepConfig fields, e.g. resolution=64 (the flags' string
        forms are accepted, see `make_config`).

    Returns:
      The dataset_info dict (counts per split/category, rejections, groups...).

    Raises:
      errors.UserError: a bad flag, a missing input, an existing or locked output.
    """
    c = config_lib.make_config(**{**(dataclasses.asdict(config) if config else {}), **overrides})
    inputs = [i.strip() for i in ([input] if isinstance(input, str) else list(input))]
    if len(inputs) == 1 and "," in inputs[0] and not inputs[0].startswith("tfds:"):
        inputs = [i.strip() for i in inputs[0].split(",") if i.strip()]
    if not inputs or not all(inputs):
        raise errors.InvalidInputError("--input: required")
    _check_paths(inputs, output_dir, c, num_shards)
    library = occluders.OccluderLibrary(c.occluders_dir) if c.occluders_dir else None
    try:
        synth.available_categories(library, dict(c.category_weights))  # fail now, not on a worker
    except ValueError as e:
        raise errors.InvalidInputError(f"--category_weights: {e}") from None
    # Resolve (and if needed download) the landmarker once here so a missing
    # model fails before any worker starts; workers resolve it the same way.
    assets.resolve_model("face_landmarker.task", c.landmarker_model)
    remote = "://" in output_dir
    with (contextlib.nullcontext() if remote else output_lock(output_dir)):
        existing = [] if remote else _existing_dataset(output_dir)
        if existing and not overwrite:
            raise errors.OutputExistsError(
                f"{output_dir!r} already holds a dataset ({len(existing)} files, e.g. {existing[0]}); "
                "pass --overwrite to replace it")
        found, skipped, tfds_spec, input_info = _sources(inputs, c, manual_dir, tfds_data_dir)
        if remote:
            tmp = output_dir.rstrip("/") + f".building-{os.getpid()}-{int(time.time())}"
        else:
            _remove_leftovers(output_dir)
            parent = os.path.dirname(os.path.abspath(output_dir))
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=os.path.basename(features.building_prefix(output_dir)),
                                   dir=parent)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the dataset from others
        # writer-policy: exempt (inside the staging folder, published whole by _install)
        with FileSystems.create(FileSystems.join(tmp, features.BUILDING_MARKER)) as f:
            f.write((json.dumps({**_holder(), "output_dir": output_dir}) + "\n").encode())
        try:
            info = _run(found, skipped, tmp, c, num_shards, library, tfds_spec, input_info,
                        pipeline_args, inputs, output_dir)
            check_not_empty(info, c, inputs)
            if not remote:
                os.remove(os.path.join(tmp, features.BUILDING_MARKER))
                _check_written(tmp, info)
                _install(tmp, output_dir)
            else:
                _install_remote(tmp, output_dir)
        except BaseException:
            # The old dataset (if any) is untouched; the unfinished one goes.
            if remote:
                logging.error("data_prep: build failed; its partial output is in %s", tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return info


def check_not_empty(info: dict, c: PrepConfig, inputs: Sequence[str]) -> None:
    """Refuses a dataset nothing can train on: no record at all, or an empty train split.

    A train split that was asked for (a non-zero fraction) but got no record
    means every photo of the train people was rejected; a dataset without
    a "train" split (e.g. --splits=test=1) is a choice and passes.

    Raises:
      EmptyDatasetError: one line with the counts by rejection reason.
    """
    reasons = ", ".join(f"{k} {v}" for k, v in info["rejected"].items() if v) or "none"
    read = info["images"]["read"]
    where = ",".join(inputs)
    if info["num_records"] == 0:
        raise EmptyDatasetError(
            f"--input {where}: no pair was made from the {read} entries read (rejected: {reasons}); "
            "no dataset was written")
    wanted = dict(c.splits).get("train", 0.0) > 0
    if wanted and info["splits"].get("train", {}).get("num_records", 0) == 0:
        got = {k: v["num_records"] for k, v in info["splits"].items()}
        raise EmptyDatasetError(
            f"--input {where}: the train split got no record ({got}; rejected: {reasons}): every "
            "photo of the people hashed to train was rejected; add photos or change --splits. "
            "No dataset was written")


def _run(found, skipped, out, c, num_shards, library, tfds_spec, input_info, pipeline_args, inputs,
         output_dir) -> dict:
    """Runs the Beam pipeline into `out`; returns the dataset_info it wrote."""
    args = default_pipeline_args(pipeline_args, len(found))
    logging.info("data_prep: %d input images (+%d skipped entries) from %s -> %s (beam args %s)",
                 len(found), len(skipped), ",".join(inputs), output_dir, args)
    t0 = time.time()
    p = beam.Pipeline(options=PipelineOptions(args))
    pipeline.build_pipeline(p, found, out, c, num_shards=num_shards,
                            occluder_version=library.version if library else None,
                            tfds_spec=tfds_spec, skipped=skipped, extra_info=input_info)
    result = p.run()
    result.wait_until_finish()
    elapsed = time.time() - t0
    logging.info("data_prep: %d images in %.1f s (%.2f images/s)", len(found), elapsed,
                 len(found) / max(elapsed, 1e-9))
    _log_metrics(result)
    with FileSystems.open(FileSystems.join(out, features.DATASET_INFO)) as f:
        return json.loads(f.read().decode())


def _log_metrics(result) -> None:
    """Beam counters and per-stage timings, where the runner reports them."""
    try:
        metrics = result.metrics().query()
    except Exception:  # noqa: BLE001 - not every runner supports metric queries
        return
    for c in metrics["counters"]:
        if c.key.metric.namespace == alignment.METRICS_NAMESPACE:
            logging.info("  %s = %d", c.key.metric.name, c.committed)
    for d in metrics["distributions"]:
        if d.key.metric.namespace == alignment.METRICS_NAMESPACE and d.committed and d.committed.count:
            logging.info("  %s: mean %.1f ms over %d", d.key.metric.name, d.committed.mean, d.committed.count)
