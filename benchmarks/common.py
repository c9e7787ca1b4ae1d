"""Helpers shared by the input, inference and quality benchmarks.

Machine facts, configs as the trainer runs them, the data set the benchmarks prepare from real
photos, and JSON writing. Importing it does not import jax, so XLA_FLAGS set by a caller before
the first jax import still apply.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from typing import Any, Mapping, NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DEOCC_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
DEFAULT_PHOTOS = os.path.join(SHARED, "data", "faces")
DEFAULT_OCCLUDERS = os.path.join(SHARED, "occluders")
# One data set for the input and quality benchmarks: 128 px, 2 variants per face, a test split
# large enough to average over (15 % of the photos).
DEFAULT_DATA_DIR = "/tmp/deocc_bench/faces128"
DEFAULT_SPLITS = "train=0.8,validation=0.05,test=0.15"


def cpu_model() -> str:
    """The CPU model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


class DataFlags(NamedTuple):
    """The holders of the data set flags (`define_data_flags`)."""
    data_dir: Any
    photos: Any
    max_photos: Any
    occluders_dir: Any


def define_data_flags() -> DataFlags:
    """The flags of the benchmarks that prepare (or reuse) their data set with data_prep.

    Called once, at the top of a binary module (never by a library: flags are global).
    """
    from absl import flags
    return DataFlags(
        flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR,
                            "Prepared data set; built from --photos when missing."),
        flags.DEFINE_string("photos", DEFAULT_PHOTOS, "Face photos to prepare from."),
        flags.DEFINE_integer("max_photos", 120, "Photos used when preparing the data."),
        flags.DEFINE_string("occluders_dir", DEFAULT_OCCLUDERS,
                            "Occluder folder for data prep ('' = procedural only)."))


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, jax device, library versions, XLA flags.

    Every benchmark's JSON records these (train_step adds its thread count).
    """
    import jax
    import jaxlib

    return {
        "cpu_model": cpu_model(),
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "jax_backend": jax.default_backend(),
        "jax_device": jax.devices()[0].device_kind,
        "jax_device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def code_state() -> dict[str, Any]:
    """The git commit of the repository and the files that differ from it (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"git_head": git("rev-parse", "HEAD").strip(),
            "modified_files": [line[3:] for line in git("status", "--short").splitlines()
                               if line[:2].strip() == "M"]}


def load_config(name: str, resolution: int, batch_size: int, data_dir: str = "",
                arg: str | None = None):
    """configs/<name>.py (its `get_config(arg)`) at `resolution` and `batch_size`, as
    `deocc_jax.train --config=configs/<name>.py[:arg]` would run it."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config(arg)
    config.resolution = resolution
    config.batch_size = batch_size
    config.data_dir = data_dir
    return config


def select_photos(photos_dir: str, max_photos: int, out_dir: str) -> list[str]:
    """Copies the first `max_photos` photos of `photos_dir` (sorted by name) into `out_dir`."""
    from deocc_jax.restoration import infer_lib

    paths = infer_lib.collect_images(photos_dir)
    if not paths:
        raise FileNotFoundError(f"no photos in {photos_dir!r}")
    paths = paths[:max_photos]
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for p in paths:
        dst = os.path.join(out_dir, os.path.basename(p))
        if not os.path.exists(dst):
            shutil.copyfile(p, dst)
        out.append(dst)
    return out


# Marks a data set this module built (and may therefore rebuild).
BUILT_HERE = "benchmark_dataset.json"


def prepare_dataset(data_dir: str, *, photos_dir: str = DEFAULT_PHOTOS, max_photos: int = 120,
                    resolution: int = 128, variants_per_face: int = 2, seed: int = 0,
                    occluders_dir: str | None = DEFAULT_OCCLUDERS,
                    splits: str = DEFAULT_SPLITS, log=print) -> dict[str, Any]:
    """The benchmark data set in `data_dir`, built with data_prep.build_dataset unless present.

    A data set the benchmark did not build (no BUILT_HERE marker: the user's own, given
    with --data_dir) is used as it is and never replaced. One the benchmark built is
    reused when its dataset_info.json has the same resolution, variants, seed and photo
    count (what the benchmarks' numbers depend on); otherwise it is rebuilt.

    Returns:
      The dataset_info dict.
    """
    from deocc_jax.data import features

    info_path = os.path.join(data_dir, "dataset_info.json")
    if os.path.exists(info_path):
        info = features.read_dataset_info(data_dir)
        if not os.path.exists(os.path.join(data_dir, BUILT_HERE)):
            log(f"using the data set in {data_dir} as it is ({info['resolution']} px, "
                f"{info.get('images')}); the benchmark never replaces a data set it did not build")
            return info
        same = (int(info["resolution"]) == resolution
                and int(info.get("variants_per_face", -1)) == variants_per_face
                and int(info.get("seed", -1)) == seed
                and int(info.get("images", {}).get("read", -1)) == max_photos)
        if same:
            log(f"reusing the data set in {data_dir}")
            return info
        log(f"{data_dir} holds another data set the benchmark built ({info['resolution']} px, "
            f"{info.get('variants_per_face')} variants, {info.get('images')}); rebuilding")
    from data_prep.build_lib import build_dataset

    photos = os.path.join(os.path.dirname(os.path.abspath(data_dir)),
                          os.path.basename(os.path.normpath(data_dir)) + "_photos")
    select_photos(photos_dir, max_photos, photos)
    log(f"preparing {max_photos} photos from {photos_dir} at {resolution} px into {data_dir}")
    info = build_dataset(photos, data_dir, resolution=resolution,
                         variants_per_face=variants_per_face, seed=seed, splits=splits,
                         occluders_dir=occluders_dir, overwrite=True)
    with open(os.path.join(data_dir, BUILT_HERE), "w") as f:
        json.dump({"photos_dir": os.path.abspath(photos_dir), "max_photos": max_photos}, f)
    return info


def dataset_summary(info: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """The facts of a data set a benchmark record should carry."""
    return {"data_dir": os.path.abspath(data_dir), "resolution": int(info["resolution"]),
            "records_per_split": {k: v.get("num_records") for k, v in info.get("splits", {}).items()},
            "variants_per_face": info.get("variants_per_face"),
            "images_read": info.get("images", {}).get("read"),
            "occluders": (info.get("occluder_set") or {}).get("dir"),
            "rejected": info.get("rejected")}


def write_json(path: str, record: Mapping[str, Any]) -> None:
    """Writes `record` as indented JSON, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
