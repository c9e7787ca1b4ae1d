r"""Builds a deocc training set: `python -m data_prep.build --input=... --output_dir=...`.

Face photos in, occluded/clean pairs out (TFRecord + ArrayRecord shards,
dataset_info.json, rejected.tsv, contact_sheet.png). Runs on Beam's
DirectRunner (all cores) by default; any other Beam flag (--runner,
--direct_num_workers, Dataflow's --project/--region/--temp_location, ...) is
passed to Beam unchanged.

Example:
  python -m data_prep.build --input=../shared/data/faces --output_dir=/tmp/deocc_data \
      --resolution=128 --variants_per_face=4 --occluders_dir=../shared/occluders
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

from absl import app, flags

from data_prep import decode, pipeline, synth

_OUTPUT_PATTERNS = (".tfrecord-", ".array_record-")
_METADATA = ("dataset_info.json", "rejected.tsv", pipeline.CONTACT_SHEET)
# Below this many photos DirectRunner runs in-process: starting a worker per
# core (each loading TensorFlow and MediaPipe) costs more than the work.
SMALL_INPUT = 64


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """Value of --name=value or --name value in a Beam argument list, else None."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def default_pipeline_args(pipeline_args: Sequence[str], num_sources: int) -> list[str]:
    """Adds DirectRunner defaults: every core in worker processes, unless told otherwise."""
    args = list(pipeline_args)
    runner = _flag_value(args, "--runner") or "DirectRunner"
    if runner.lower() not in ("directrunner", "direct"):
        return args
    mode = _flag_value(args, "--direct_running_mode")
    workers = _flag_value(args, "--direct_num_workers")
    if mode is None and workers is None:
        if num_sources < SMALL_INPUT:
            args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
        else:
            args += ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]
    elif workers is None and mode != "in_memory":
        args += ["--direct_num_workers=0"]
    return args


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems
    existing = []
    if FileSystems.exists(output_dir):
        existing = [m.path for m in FileSystems.match([FileSystems.join(output_dir, "*")])[0].metadata_list
                    if any(p in os.path.basename(m.path) for p in _OUTPUT_PATTERNS)
                    or os.path.basename(m.path) in _METADATA]
    if existing and not overwrite:
        raise FileExistsError(f"{output_dir!r} already holds a dataset ({len(existing)} files, e.g. "
                              f"{os.path.basename(existing[0])}); pass --overwrite to replace it")
    if existing:
        FileSystems.delete(existing)
    if "://" not in output_dir:
        os.makedirs(output_dir, exist_ok=True)


def _sources(input_spec: str, manual_dir: str | None, tfds_data_dir: str | None):
    if input_spec.startswith("tfds:"):
        name, _, split = input_spec[len("tfds:"):].partition(":")
        split = split or "train"
        n, image_key = pipeline.prepare_tfds(name, split, tfds_data_dir, manual_dir)
        sources = [pipeline.Source(pipeline.tfds_source_id(name, split, i), ("tfds", name, split, i))
                   for i in range(n)]
        return sources, {"name": name, "split": split, "data_dir": tfds_data_dir, "image_key": image_key}
    return pipeline.list_file_sources(input_spec), None


def build_dataset(input: str, output_dir: str, *, resolution: int = 256, variants_per_face: int = 4,  # noqa: A002
                  seed: int = 0, splits: str = "train=0.9,validation=0.05,test=0.05",
                  occluders_dir: str | None = None, category_weights: str | None = None,
                  pipeline_args: Sequence[str] = (), num_shards: int | None = None,
                  max_pixels: int = decode.DEFAULT_MAX_PIXELS, all_faces: bool = False,
                  max_faces: int = 4, min_face_size: int = 32, min_confidence: float = 0.3,
                  shadow_prob: float = 0.4, landmarker_model: str | None = None,
                  manual_dir: str | None = None, tfds_data_dir: str | None = None,
                  overwrite: bool = False) -> dict:
    """Runs the data-prep pipeline and returns the written dataset_info.json.

    Args:
      input: directory, glob, or "tfds:NAME[:SPLIT]".
      output_dir: destination (local path or a Beam filesystem such as gs://).
      resolution: crop side in pixels.
      variants_per_face: occluded versions per face.
      seed: seeds all random choices.
      splits: "name=fraction,..."; every split with a non-zero fraction gets at
        least one photo when there are at least as many photos as splits.
      occluders_dir: image occluders (None: procedural only).
      category_weights: "name=weight,..." (None: synth.DEFAULT_WEIGHTS).
      pipeline_args: Beam options, e.g. ["--runner=DataflowRunner", ...] or
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"].
        DirectRunner defaults: all cores in processes (in-process below
        SMALL_INPUT photos).
      num_shards: shards per split (default: ~128 MiB each, from the input size).
      max_pixels, all_faces, max_faces, min_face_size, min_confidence,
        shadow_prob, landmarker_model: see the flags of the same names.
      manual_dir, tfds_data_dir: TFDS options for tfds: inputs.
      overwrite: replace an existing dataset in output_dir.

    Returns:
      The dataset_info dict (counts per split/category, rejections, ...).
    """
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from data_prep import occluders
    from deocc_jax import assets

    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    if variants_per_face < 1:
        raise ValueError(f"variants_per_face must be >= 1, got {variants_per_face}")
    weights = synth.parse_weights(category_weights)
    library = occluders.OccluderLibrary(occluders_dir) if occluders_dir else None
    synth.available_categories(library, weights)  # fail now, not on a worker
    # Resolve (and if needed download) the landmarker once here so a missing
    # model fails before any worker starts; workers resolve it the same way.
    assets.resolve_model("face_landmarker.task", landmarker_model)
    config = pipeline.PrepConfig(
        resolution=resolution, variants_per_face=variants_per_face, seed=seed,
        splits=pipeline.parse_splits(splits), occluders_dir=occluders_dir, max_pixels=max_pixels,
        all_faces=all_faces, max_faces=max_faces, min_face_size=min_face_size,
        min_confidence=min_confidence, category_weights=tuple(sorted(weights.items())),
        shadow_prob=shadow_prob, landmarker_model=landmarker_model)
    sources, tfds_spec = _sources(input, manual_dir, tfds_data_dir)
    _prepare_output_dir(output_dir, overwrite)
    args = default_pipeline_args(pipeline_args, len(sources))
    logging.info("data_prep: %d input images from %s -> %s (beam args %s)", len(sources), input,
                 output_dir, args)
    t0 = time.time()
    p = beam.Pipeline(options=PipelineOptions(args))
    pipeline.build_pipeline(p, sources, output_dir, config, num_shards=num_shards,
                            occluder_version=library.version if library else None, tfds_spec=tfds_spec)
    result = p.run()
    result.wait_until_finish()
    elapsed = time.time() - t0
    logging.info("data_prep: %d images in %.1f s (%.2f images/s)", len(sources), elapsed,
                 len(sources) / max(elapsed, 1e-9))
    _log_metrics(result)
    with FileSystems.open(FileSystems.join(output_dir, "dataset_info.json")) as f:
        info = json.loads(f.read().decode())
    if info["num_records"] == 0:
        logging.warning("data_prep: no pairs were written: every input was rejected (%s); see %s",
                        info["rejected"], FileSystems.join(output_dir, "rejected.tsv"))
    return info


def _log_metrics(result) -> None:
    """Beam counters and per-stage timings, where the runner reports them."""
    try:
        metrics = result.metrics().query()
    except Exception:  # noqa: BLE001 - not every runner supports metric queries
        return
    for c in metrics["counters"]:
        if c.key.metric.namespace == pipeline.METRICS_NAMESPACE:
            logging.info("  %s = %d", c.key.metric.name, c.committed)
    for d in metrics["distributions"]:
        if d.key.metric.namespace == pipeline.METRICS_NAMESPACE and d.committed and d.committed.count:
            logging.info("  %s: mean %.1f ms over %d", d.key.metric.name, d.committed.mean, d.committed.count)


def define_flags() -> None:
    """Defines the binary's flags. Called from __main__ only, so that importing
    `build_dataset` into another absl program (with its own --input, --seed,
    ...) does not clash."""
    flags.DEFINE_string(
        "input", None, "A directory (searched recursively), a glob such as 'photos/*.jpg', or "
        "tfds:NAME[:SPLIT] for a TFDS dataset (see --manual_dir).")
    flags.DEFINE_string("output_dir", None, "Where shards and metadata are written.")
    flags.DEFINE_integer("resolution", 256, "Side of the aligned face crops (64, 128, 256, 512).")
    flags.DEFINE_integer("variants_per_face", 4, "Occluded versions of each face.")
    flags.DEFINE_integer("seed", 0, "Seeds every random choice (with source id and variant).")
    flags.DEFINE_string("splits", "train=0.9,validation=0.05,test=0.05",
        "Split names and fractions; split by hash of the source id.")
    flags.DEFINE_string(
        "occluders_dir", None, "Folder of RGBA occluders, one sub-folder per category (like "
        "../shared/occluders). Without it only procedural occluders are drawn.")
    flags.DEFINE_string(
        "category_weights", None, "e.g. 'face_mask=3,sunglasses=1,procedural=1'; listed categories "
        f"only. Default: {','.join(f'{k}={v:g}' for k, v in synth.DEFAULT_WEIGHTS.items())}.")
    flags.DEFINE_integer("max_pixels", decode.DEFAULT_MAX_PIXELS,
        "Images with more pixels are rejected as too_large, undecoded.")
    flags.DEFINE_bool("all_faces", False, "Keep every face above --min_face_size, "
        "not only the largest.")
    flags.DEFINE_integer("max_faces", 4, "Most faces detected per photo.")
    flags.DEFINE_integer("min_face_size", 32,
        "Smallest face width (source pixels) kept; smaller: face_too_small.")
    flags.DEFINE_float("min_confidence", 0.3, "MediaPipe face detection threshold.")
    flags.DEFINE_float("shadow_prob", 0.4, "Probability of a soft shadow under an occluder.")
    flags.DEFINE_integer("num_shards", None, "Shards per split; default ~128 MiB per shard.")
    flags.DEFINE_string("landmarker_model", None,
        "Path of face_landmarker.task (default: $DEOCC_ASSETS_DIR, cache, download).")
    flags.DEFINE_string("manual_dir", None,
        "TFDS manual download folder (e.g. for celeb_a_hq).")
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --output_dir.")


def main(argv: Sequence[str]) -> None:
    f = flags.FLAGS
    if not f.input or not f.output_dir:
        raise app.UsageError("--input and --output_dir are required")
    info = build_dataset(
        f.input, f.output_dir, resolution=f.resolution, variants_per_face=f.variants_per_face,
        seed=f.seed, splits=f.splits, occluders_dir=f.occluders_dir,
        category_weights=f.category_weights, pipeline_args=argv[1:], num_shards=f.num_shards,
        max_pixels=f.max_pixels, all_faces=f.all_faces, max_faces=f.max_faces,
        min_face_size=f.min_face_size, min_confidence=f.min_confidence, shadow_prob=f.shadow_prob,
        landmarker_model=f.landmarker_model, manual_dir=f.manual_dir,
        tfds_data_dir=f.tfds_data_dir, overwrite=f.overwrite)
    print(json.dumps({k: info[k] for k in ("num_records", "images", "rejected", "categories")}, indent=2))
    print(f"splits: { {k: v['num_records'] for k, v in info['splits'].items()} }; "
          f"contact sheet: {os.path.join(f.output_dir, pipeline.CONTACT_SHEET)}")


def _parse_flags(argv: list[str]) -> list[str]:
    # Flags absl does not know (--runner, --project, ...) are Beam's: keep them.
    return flags.FLAGS(argv, known_only=True)


if __name__ == "__main__":
    define_flags()
    logging.getLogger().setLevel(logging.INFO)
    app.run(main, flags_parser=_parse_flags)
