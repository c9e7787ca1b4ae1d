"""The Beam pipeline: photos -> aligned faces -> groups and splits -> pairs -> shards.

Graph (identical on DirectRunner, Dataflow, Flink, Spark):

    sources (driver-listed, sorted; skipped entries counted as rejections)
      -> AlignFacesFn    decode, landmarks, checks, FFHQ-style padded crop
           main:      AlignedFace (the crop, its landmarks, a near-duplicate
                      descriptor; paired input: the occluded crop and mask)
           rejected:  (source_id, path, reason, detail)
           accepted:  source_id
      -> Plan (one element, a side input): groups = --group_by names merged
           with near-duplicates; split boundaries over the groups; shard counts
      -> SynthesizeFn    split from the plan, occluders (or the real pair), encode
      -> + one empty element per (split, shard)  -> GroupByKey -> WriteShardFn
      -> FinalizeFn (side inputs: shard results, rejections, accepted, samples, plan)
           writes dataset_info.json, rejected.tsv, contact_sheet.png

Determinism: groups, splits and shards come from sha256 of ids and from a
plan computed from the sorted list of faces, every random draw from
`synth.variant_rng(seed, source_id, variant)`, and each shard is written
sorted by record key, so records and shard files do not depend on the runner,
the number of workers or bundle boundaries.

The stages' pure parts live beside it: `alignment` (AlignFacesFn and the face checks),
`plan` (groups, splits, shards), `synth` (the occluded copies).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Iterable, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from data_prep import geometry, occluders, sources, synth
from data_prep.alignment import METRICS_NAMESPACE, REJECT_REASONS, AlignedFace, AlignFacesFn, ProgressLog
from data_prep.config import PrepConfig
from data_prep.plan import Plan, make_plan, record_key, shard_of
from data_prep.sources import Source
from deocc_jax import __version__
from deocc_jax.data import features, writer
from deocc_jax.faces import landmarks as L


CONTACT_SHEET = "contact_sheet.png"
PAIRED = "paired"


def _is_remote(path: str) -> bool:
    return "://" in path


class SynthesizeFn(beam.DoFn):
    """Occluded variants of one aligned face (or its real pair), encoded, keyed by shard."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._pairs = Metrics.counter(METRICS_NAMESPACE, "pairs_written")
        self._timers = {k: Metrics.distribution(METRICS_NAMESPACE, f"ms_{k}")
                        for k in ("synthesize", "encode")}

    def setup(self):
        c = self.config
        self.library = occluders.OccluderLibrary(c.occluders_dir) if c.occluders_dir else None
        self.synth_config = c.synth_config()
        self.canonical = L.canonical_face(c.landmarker_model)
        self._log = ProgressLog("faces given occluders")

    def process(self, face: AlignedFace, plan: Plan):
        self._log.tick()
        c = self.config
        split = plan.split(face.record_source)
        n_shards = plan.shards[split]
        if face.occluded is not None:
            record = features.encode_example(features.Pair(
                clean=face.clean, occluded=face.occluded, mask=face.mask, alpha=face.mask,
                category=PAIRED, source_id=face.record_source, variant=0, landmarks=face.landmarks,
                padding_fraction=face.padding_fraction))
            key = record_key(face.record_source, 0)
            self._pairs.inc()
            yield (split, shard_of(key, n_shards)), (key, PAIRED, record, PAIRED)
            return
        geo = geometry.FaceGeometry.from_landmarks(face.landmarks, c.resolution, self.canonical)
        stats = synth.photo_stats(face.clean, geo)
        for v in range(c.variants_per_face):
            t = time.perf_counter()
            rng = synth.variant_rng(c.seed, face.record_source, v)
            s = synth.synthesize(face.clean, face.landmarks, rng, self.library, self.synth_config,
                                 geometry=geo, stats=stats)
            t1 = time.perf_counter()
            record = features.encode_example(features.Pair(
                clean=s.clean, occluded=s.occluded, mask=s.mask, alpha=s.alpha,
                category=s.category, source_id=face.record_source, variant=v,
                landmarks=face.landmarks, padding_fraction=face.padding_fraction))
            self._timers["synthesize"].update(int((t1 - t) * 1000))
            self._timers["encode"].update(int((time.perf_counter() - t1) * 1000))
            key = record_key(face.record_source, v)
            self._pairs.inc()
            yield (split, shard_of(key, n_shards)), (key, s.category, record, s.kind)


class ReadTfdsFn(beam.DoFn):
    """Reads one index range of a prepared TFDS split as (Source, image array)."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str):
        self.name, self.split, self.data_dir, self.image_key = name, split, data_dir, image_key

    def process(self, chunk: tuple[int, int]):
        import tensorflow_datasets as tfds  # heavy; only TFDS inputs need it
        start, end = chunk
        ds = tfds.load(self.name, split=f"{self.split}[{start}:{end}]", data_dir=self.data_dir,
                       download=False, shuffle_files=False)
        for i, ex in enumerate(tfds.as_numpy(ds)):
            idx = start + i
            yield Source(tfds_source_id(self.name, self.split, idx),
                         ("tfds", self.name, self.split, idx)), ex[self.image_key]


def tfds_source_id(name: str, split: str, index: int) -> str:
    return f"tfds/{name}/{split}/{index:09d}"


def prepare_tfds(name: str, split: str, data_dir: str | None, manual_dir: str | None
                 ) -> tuple[int, str]:
    """Prepares a TFDS dataset (manual_dir for datasets like celeb_a_hq) on the driver.

    Returns:
      (number of examples in the split, name of its image feature).
    """
    import tensorflow_datasets as tfds  # heavy; only TFDS inputs need it
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    image_keys = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
        raise ValueError(f"TFDS dataset {name!r} has no Image feature: {list(builder.info.features)}")
    return builder.info.splits[split].num_examples, image_keys[0]


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------

class WriteShardFn(beam.DoFn):
    """Sorts one shard's records by key and writes it in both formats."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element, plan: Plan):
        (split, index), values = element
        values = sorted(v for v in values if v is not None)
        keys = [k for k, _, _, _ in values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate record keys in {split} shard {index}")
        n_shards = plan.shards[split]
        records = [r for _, _, r, _ in values]
        if _is_remote(self.output_dir):
            # writer.write_shard writes local files; stage them, then copy out.
            tmp = tempfile.mkdtemp(prefix="deocc_shard_")
            try:
                writer.write_shard(tmp, split, index, n_shards, records)
                for fmt in ("tfrecord", "array_record"):
                    name = features.shard_name(split, fmt, index, n_shards)
                    FileSystems.copy([os.path.join(tmp, name)], [FileSystems.join(self.output_dir, name)])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            writer.write_shard(self.output_dir, split, index, n_shards, records)
        yield {"split": split, "index": index, "num_records": len(records),
               "categories": dict(collections.Counter(c for _, c, _, _ in values)),
               "kinds": dict(collections.Counter(k for _, _, _, k in values))}


def contact_sheet(samples: Iterable[bytes], thumb: int = 128, per_row: int = 4) -> np.ndarray:
    """RGB image: rows of (clean | occluded | mask) triplets with category labels."""
    tiles = []
    for rec in samples:
        d = features.decode_example(rec)
        trip = [d["clean"], d["occluded"], np.repeat(d["mask"], 3, -1)]
        size = min(thumb, trip[0].shape[0])
        trip = [cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in trip]
        tile = np.concatenate(trip, 1)
        cv2.putText(tile, d["category"], (2, 9), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1,
                    cv2.LINE_AA)
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
    if not tiles:
        return np.zeros((thumb, 3 * thumb, 3), np.uint8)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i:i + per_row], 1) for i in range(0, len(tiles), per_row)]
    return np.concatenate(rows, 0)


def _write_bytes(path: str, data: bytes) -> None:
    # writer-policy: exempt (into the build's staging folder, which build.py publishes whole)
    with FileSystems.create(path) as f:
        f.write(data)


def check_records(expected: dict[str, int], written: dict[str, int]) -> None:
    """Raises unless every record the accepted faces produced is in a shard, per split.

    A runner that drops elements (seen once with DirectRunner's multi-processing mode
    on 31k records: 4,476 records never reached the shard writers) must fail the build
    rather than install a dataset with faces silently missing.
    """
    lost = {name: n - written.get(name, 0) for name, n in expected.items()
            if n != written.get(name, 0)}
    if lost:
        raise RuntimeError(
            f"accounting error: records missing from the shards (split: expected - written) "
            f"{lost}; {sum(expected.values())} produced, {sum(written.values())} written. The "
            "runner lost elements; nothing was installed. Retry, e.g. with "
            "--direct_running_mode=in_memory")


class FinalizeFn(beam.DoFn):
    """Writes dataset_info.json, rejected.tsv and the contact sheet, after all shards."""

    def __init__(self, output_dir: str, info_base: dict, num_read: int):
        self.output_dir = output_dir
        self.info_base = info_base
        self.num_read = num_read

    def process(self, _, shard_results, rejected, accepted, samples, plan: Plan):
        rejected = sorted(rejected)
        by_reason = {r: 0 for r in REJECT_REASONS}
        for _, _, reason, _ in rejected:
            by_reason[reason] += 1
        splits: dict[str, dict] = {}
        categories, kinds = collections.Counter(), collections.Counter()
        for r in sorted(shard_results, key=lambda r: (r["split"], r["index"])):
            s = splits.setdefault(r["split"], {"num_records": 0, "num_shards": 0, "categories": {}})
            s["num_records"] += r["num_records"]
            s["num_shards"] += 1
            for c, n in r["categories"].items():
                s["categories"][c] = s["categories"].get(c, 0) + n
                categories[c] += n
            kinds.update(r["kinds"])
        for s in splits.values():
            s["categories"] = dict(sorted(s["categories"].items()))
        num_accepted = len(set(accepted))
        if num_accepted + len(rejected) != self.num_read:
            raise RuntimeError(f"accounting error: read {self.num_read} entries but "
                               f"{num_accepted} made pairs and {len(rejected)} were rejected")
        check_records(plan.records, {name: s["num_records"] for name, s in splits.items()})
        info = dict(self.info_base)
        info.update({
            "num_records": sum(s["num_records"] for s in splits.values()),
            "splits": splits,
            "categories": dict(sorted(categories.items())),
            # Face masks by print/colouring ("face_mask:dots/dark"), other categories as above.
            "occluder_kinds": dict(sorted(kinds.items())),
            "images": {"read": self.num_read, "accepted": num_accepted, "rejected": len(rejected)},
            "rejected": by_reason,
            "groups": plan.stats,
        })
        _write_bytes(FileSystems.join(self.output_dir, features.DATASET_INFO),
                     (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        lines = ["source_id\tpath\treason\tdetail"] + [
            "\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in row) for row in rejected]
        _write_bytes(FileSystems.join(self.output_dir, "rejected.tsv"), ("\n".join(lines) + "\n").encode())
        sheet = contact_sheet(rec for _, rec in sorted(samples))
        ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        _write_bytes(FileSystems.join(self.output_dir, CONTACT_SHEET), png.tobytes())
        logging.info("data_prep: read %d entries, %d records in %s, rejected %s",
                     self.num_read, info["num_records"],
                     {k: v["num_records"] for k, v in splits.items()},
                     {k: v for k, v in by_reason.items() if v})
        yield info


def _plan_entry(face: AlignedFace, variants: int) -> tuple[str, str, np.ndarray, int]:
    return face.record_source, face.group, face.descriptor, 1 if face.occluded is not None else variants


def _empty_shards(plan: Plan):
    for name, n in sorted(plan.shards.items()):
        for i in range(n):
            yield (name, i), None


def build_pipeline(p: beam.Pipeline, inputs: list[Source], output_dir: str, config: PrepConfig,
                   num_shards: int | None = None, occluder_version: str | None = None,
                   tfds_spec: dict | None = None, skipped: Sequence[sources.Skipped] = (),
                   extra_info: dict | None = None) -> None:
    """Adds the whole data-prep graph to pipeline `p`.

    Args:
      p: the pipeline.
      inputs: every photo (for TFDS, the ids with ("tfds", ...) locators).
      output_dir: where shards and metadata go (local or a Beam filesystem).
      config: what to produce.
      num_shards: shards per split; default from the number of records.
      occluder_version: recorded in dataset_info.json.
      tfds_spec: {"name", "split", "data_dir", "image_key"} when reading TFDS.
      skipped: entries found while listing but not processed (counted as rejected).
      extra_info: more keys for dataset_info.json.
    """
    ids = [s.source_id for s in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError("source ids are not unique")
    if tfds_spec:
        n = len(inputs)
        chunk = 256
        elements = (p | "TfdsChunks" >> beam.Create([(i, min(i + chunk, n)) for i in range(0, n, chunk)])
                    | "ReadTfds" >> beam.ParDo(ReadTfdsFn(tfds_spec["name"], tfds_spec["split"],
                                                           tfds_spec.get("data_dir"), tfds_spec["image_key"])))
    else:
        elements = p | "Sources" >> beam.Create(inputs) | "Spread" >> beam.Reshuffle()
    aligned = elements | "AlignFaces" >> beam.ParDo(AlignFacesFn(config)).with_outputs(
        AlignFacesFn.REJECTED, AlignFacesFn.ACCEPTED, main="faces")
    variants = config.variants_per_face
    plan = (aligned.faces
            | "PlanEntries" >> beam.Map(_plan_entry, variants)
            | "AllFaces" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(make_plan, config, num_shards))
    plan_side = beam.pvalue.AsSingleton(plan)
    records = aligned.faces | "Synthesize" >> beam.ParDo(SynthesizeFn(config), plan_side)
    # One empty element per shard so that every shard file exists even if empty.
    empty = plan | "AllShards" >> beam.FlatMap(_empty_shards)
    shard_results = (
        (records, empty) | "WithEmpty" >> beam.Flatten()
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir), plan_side))
    samples = (
        records
        | "SampleKeys" >> beam.Map(lambda kv: (hashlib.sha256(kv[1][0].encode()).hexdigest(), kv[1][2]))
        | "Sample" >> beam.combiners.Top.Smallest(config.num_contact_pairs, key=lambda x: x[0]))
    listing = [(s.source_id, s.path, s.reason, s.detail) for s in skipped]
    rejected = ((aligned[AlignFacesFn.REJECTED], p | "Skipped" >> beam.Create(listing))
                | "AllRejected" >> beam.Flatten())
    info_base = {
        "format_version": features.FORMAT_VERSION,
        "resolution": config.resolution,
        "seed": config.seed,
        "variants_per_face": config.variants_per_face,
        "split_fractions": dict(config.splits),
        "feature_spec": features.feature_spec_json(),
        "code_version": __version__,
        "occluder_set": {"dir": config.occluders_dir, "version": occluder_version},
        "config": {**{k: v for k, v in dataclasses.asdict(config).items()
                      if k not in ("splits", "occluders_dir")},
                   "category_weights": dict(config.category_weights)},
        "formats": ["tfrecord", "array_record"],
        **(extra_info or {}),
    }
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(
             FinalizeFn(output_dir, info_base, len(inputs) + len(listing)),
             beam.pvalue.AsList(shard_results),
             beam.pvalue.AsList(rejected),
             beam.pvalue.AsList(aligned[AlignFacesFn.ACCEPTED]),
             beam.pvalue.AsSingleton(samples),
             plan_side))
