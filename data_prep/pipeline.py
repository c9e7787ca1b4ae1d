"""The Beam pipeline: photos -> aligned faces -> occluded/clean pairs -> shards.

Graph (identical on DirectRunner, Dataflow, Flink, Spark):

    sources (driver-listed, sorted)
      -> ProcessImageFn   decode, landmarks, align, synthesise, encode
           main:      ((split, shard), (key, category, record bytes))
           rejected:  (source_id, path, reason, detail)
           accepted:  source_id
      -> + one empty element per (split, shard)  -> GroupByKey -> WriteShardFn
      -> FinalizeFn (side inputs: shard results, rejections, accepted, samples)
           writes dataset_info.json, rejected.tsv, contact_sheet.png

Determinism: split and shard come from sha256 of ids, every random draw from
`synth.variant_rng(seed, source_id, variant)`, and each shard is written
sorted by record key, so records and shard files do not depend on the runner,
the number of workers or bundle boundaries.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from data_prep import decode, occluders, synth

METRICS_NAMESPACE = "deocc.data_prep"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".jfif", ".ppm", ".pgm", ".pnm")
CONTACT_SHEET = "contact_sheet.png"


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """Everything that decides the records (and so belongs in dataset_info.json).

    Attributes:
      resolution: side of the aligned crops in pixels.
      variants_per_face: occluded versions of each face.
      seed: seeds every random draw, with the source id and variant index.
      splits: ((name, fraction), ...); fractions sum to 1.
      occluders_dir: folder of image occluders, or None for procedural only.
      max_pixels: larger images are rejected as too_large before decoding.
      all_faces: keep every face above min_face_size instead of the largest.
      max_faces: the most faces detected per photo.
      min_face_size: smallest face width (landmark box, source pixels) kept.
      min_confidence: MediaPipe detection/presence threshold.
      category_weights: category -> weight (synth.DEFAULT_WEIGHTS by default).
      shadow_prob, image_share: see synth.SynthConfig.
      landmarker_model: explicit face_landmarker.task, else assets resolution.
      num_contact_pairs: pairs on the contact sheet.
    """
    resolution: int = 256
    variants_per_face: int = 4
    seed: int = 0
    splits: tuple[tuple[str, float], ...] = (("train", 0.9), ("validation", 0.05), ("test", 0.05))
    occluders_dir: str | None = None
    max_pixels: int = decode.DEFAULT_MAX_PIXELS
    all_faces: bool = False
    max_faces: int = 4
    min_face_size: int = 32
    min_confidence: float = 0.3
    category_weights: tuple[tuple[str, float], ...] = tuple(sorted(synth.DEFAULT_WEIGHTS.items()))
    shadow_prob: float = 0.4
    image_share: float = 0.7
    landmarker_model: str | None = None
    num_contact_pairs: int = 36

    def synth_config(self) -> synth.SynthConfig:
        return synth.SynthConfig(weights=dict(self.category_weights), image_share=self.image_share,
                                 shadow_prob=self.shadow_prob)


def parse_splits(spec: str) -> tuple[tuple[str, float], ...]:
    """"train=0.9,validation=0.05,test=0.05" -> (("train", 0.9), ...)."""
    out = []
    for part in spec.split(","):
        name, sep, frac = part.partition("=")
        name = name.strip()
        if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"bad split {part!r} in {spec!r}: expected NAME=FRACTION")
        out.append((name, float(frac)))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"duplicate split names in {spec!r}")
    if any(f < 0 for _, f in out) or not math.isclose(sum(f for _, f in out), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions in {spec!r} must be >= 0 and sum to 1")
    return tuple(out)


# ----------------------------------------------------------------------------
# Sources, splits and shards (pure functions, run on the driver).
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """One input photo: a file path, or ("tfds", name, split, index)."""
    source_id: str
    locator: Any


def _id_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _is_remote(path: str) -> bool:
    return "://" in path


def list_file_sources(input_spec: str) -> list[Source]:
    """Image files of a directory (recursive) or a glob, sorted, with stable ids.

    The id is the path relative to the directory (or to the glob's fixed
    prefix), so moving the dataset does not change ids, splits or seeds. Only
    files with image extensions are taken; anything else in the folder is
    logged and skipped.
    """
    is_glob = any(ch in input_spec for ch in "*?[")
    if is_glob:
        root = input_spec.split("*")[0].split("?")[0].split("[")[0]
        root = root if root.endswith(("/", os.sep)) else os.path.dirname(root)
        pattern = input_spec
    else:
        root = input_spec
        pattern = input_spec.rstrip("/") + "/**"
    if _is_remote(pattern):
        paths = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    else:
        if not is_glob and not os.path.isdir(input_spec):
            raise FileNotFoundError(f"--input {input_spec!r} is neither a directory, a glob nor tfds:NAME")
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    paths = sorted(set(paths))
    images = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
    if len(images) < len(paths):
        logging.info("skipping %d files without an image extension %s, e.g. %s",
                     len(paths) - len(images), IMAGE_EXTENSIONS,
                     [p for p in paths if p not in set(images)][:3])
    if not images:
        raise FileNotFoundError(f"no image files found for --input {input_spec!r}")
    root = root.rstrip("/")
    out = []
    for p in images:
        rel = p[len(root):].lstrip("/") if root and p.startswith(root) else p
        out.append(Source(rel.replace(os.sep, "/"), p))
    return out


def split_thresholds(source_ids: Sequence[str],
                     splits: Sequence[tuple[str, float]]) -> list[tuple[int, str]]:
    """Hash boundaries that give each split its share of these ids.

    Ids are ordered by sha256 and cut at the split fractions (largest
    remainder), giving each split with a non-zero fraction at least one id when
    there are enough ids. A source's split is then a function of its own hash
    and these boundaries, so workers need only this short list, and every
    variant (and face) of a photo lands in the same split. The seed does not
    enter: the test set stays fixed across seeds.

    Returns:
      [(upper hash bound exclusive, split name)] in ascending order.
    """
    hashes = sorted(_id_hash(s) for s in source_ids)
    n = len(hashes)
    fr = np.array([f for _, f in splits], np.float64)
    counts = np.floor(fr * n).astype(int)
    for i in np.argsort(-(fr * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # Tiny datasets: move one id into each empty split that asked for some.
    for i in range(len(splits)):
        if fr[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    out, pos = [], 0
    for (name, _), c in zip(splits, counts):
        pos += int(c)
        bound = hashes[pos] if pos < n else 2 ** 64
        out.append((bound, name))
    return out


def split_of(source_id: str, thresholds: Sequence[tuple[int, str]]) -> str:
    h = _id_hash(source_id)
    for bound, name in thresholds:
        if h < bound:
            return name
    return thresholds[-1][1]


def records_per_shard(resolution: int) -> int:
    """About 128 MiB per shard (a record is roughly 6 bytes per crop pixel)."""
    return int(np.clip((128 << 20) // (resolution * resolution * 6), 64, 10000))


def shard_counts(source_ids: Sequence[str], thresholds, config: PrepConfig,
                 num_shards: int | None = None) -> dict[str, int]:
    """Shards per split, from the number of sources (never from the workers)."""
    per_split = collections.Counter(split_of(s, thresholds) for s in source_ids)
    out = {}
    for name, _ in config.splits:
        if num_shards:
            out[name] = int(num_shards)
        else:
            expected = per_split.get(name, 0) * config.variants_per_face
            out[name] = max(1, math.ceil(expected / records_per_shard(config.resolution)))
    return out


def shard_of(record_key: str, num_shards: int) -> int:
    return _id_hash("shard:" + record_key) % num_shards


def record_key(source_id: str, variant: int) -> str:
    return f"{source_id}\x00{variant:06d}"


# ----------------------------------------------------------------------------
# Per-image work.
# ----------------------------------------------------------------------------

class ProcessImageFn(beam.DoFn):
    """Decode -> landmarks -> align -> synthesise -> encode, for one photo.

    The FaceAnalyzer and the occluder library are created once per DoFn
    instance in setup(): loading the landmarker costs far more than one image.
    """

    REJECTED = "rejected"
    ACCEPTED = "accepted"

    def __init__(self, config: PrepConfig, thresholds, num_shards: dict[str, int]):
        self.config = config
        self.thresholds = thresholds
        self.num_shards = num_shards
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._pairs = Metrics.counter(METRICS_NAMESPACE, "pairs_written")
        self._rejected = {r: Metrics.counter(METRICS_NAMESPACE, f"rejected_{r}")
                          for r in decode.REJECT_REASONS}
        self._timers = {k: Metrics.distribution(METRICS_NAMESPACE, f"ms_{k}")
                        for k in ("decode", "landmarks", "align", "synthesize", "encode")}

    def setup(self):
        from deocc_jax.faces import FaceAnalyzer
        c = self.config
        # Several faces even in largest-face mode: MediaPipe orders by score, not size.
        self.analyzer = FaceAnalyzer(mode="image", num_faces=c.max_faces,
                                     min_confidence=c.min_confidence, model_path=c.landmarker_model)
        self.library = occluders.OccluderLibrary(c.occluders_dir) if c.occluders_dir else None
        self.synth_config = c.synth_config()
        self._n = self._n_rejected = 0
        self._t0 = self._last_log = time.time()

    def teardown(self):
        analyzer = getattr(self, "analyzer", None)
        if analyzer is not None:
            analyzer.close()
            self.analyzer = None

    def _tick(self, key: str, t0: float) -> float:
        t1 = time.perf_counter()
        self._timers[key].update(int((t1 - t0) * 1000))
        return t1

    def _progress(self, rejected: bool) -> None:
        self._n += 1
        self._n_rejected += int(rejected)
        now = time.time()
        if now - self._last_log > 15 or self._n in (1, 10, 100):
            self._last_log = now
            logging.info("data_prep worker %d: %d images done (%.1f images/s), %d rejected",
                         os.getpid(), self._n, self._n / max(now - self._t0, 1e-6), self._n_rejected)

    def _reject(self, source: Source, reason: str, detail: str):
        self._rejected[reason].inc()
        self._progress(True)
        locator = source.locator if isinstance(source.locator, str) else "/".join(map(str, source.locator))
        return beam.pvalue.TaggedOutput(self.REJECTED, (source.source_id, locator, reason, detail))

    def process(self, element):
        source, payload = element if isinstance(element, tuple) else (element, None)
        self._read.inc()
        t = time.perf_counter()
        try:
            if payload is not None:       # an array from a TFDS reader
                image = decode.to_rgb_uint8(payload)
            else:
                image = decode.read_and_decode(source.locator, self.config.max_pixels)
        except decode.DecodeError as e:
            yield self._reject(source, e.reason, e.detail)
            return
        t = self._tick("decode", t)
        yield from self._faces_to_records(source, image, t)

    def _faces_to_records(self, source: Source, image: np.ndarray, t: float):
        from deocc_jax.data import features
        from deocc_jax.faces import align

        c = self.config
        faces = self.analyzer.detect(image)
        t = self._tick("landmarks", t)
        if not faces:
            yield self._reject(source, decode.NO_FACE, f"no face found in {image.shape[1]}x{image.shape[0]} image")
            return
        faces = sorted(faces, key=lambda f: (-f.area, float(f.bbox[0]), float(f.bbox[1])))
        kept = [f for f in (faces if c.all_faces else faces[:1]) if f.width >= c.min_face_size]
        if not kept:
            yield self._reject(source, decode.FACE_TOO_SMALL,
                               f"largest face is {faces[0].width:.0f} px wide < --min_face_size={c.min_face_size}")
            return
        split = split_of(source.source_id, self.thresholds)
        n_shards = self.num_shards[split]
        for k, face in enumerate(kept):
            record_source = source.source_id if not c.all_faces else f"{source.source_id}#face{k}"
            M = align.alignment_matrix(face.landmarks, c.resolution)
            clean = align.warp_to_crop(image, M, c.resolution)
            lms = align.transform_landmarks(face.landmarks, M)
            t = self._tick("align", t)
            for v in range(c.variants_per_face):
                rng = synth.variant_rng(c.seed, record_source, v)
                s = synth.synthesize(clean, lms, rng, self.library, self.synth_config)
                t = self._tick("synthesize", t)
                record = features.encode_example(features.Pair(
                    clean=clean, occluded=s.occluded, mask=s.mask, alpha=s.alpha,
                    category=s.category, source_id=record_source, variant=v, landmarks=lms))
                t = self._tick("encode", t)
                key = record_key(record_source, v)
                self._pairs.inc()
                yield (split, shard_of(key, n_shards)), (key, s.category, record)
        self._progress(False)
        yield beam.pvalue.TaggedOutput(self.ACCEPTED, source.source_id)


class ReadTfdsFn(beam.DoFn):
    """Reads one index range of a prepared TFDS split as (Source, image array)."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str):
        self.name, self.split, self.data_dir, self.image_key = name, split, data_dir, image_key

    def process(self, chunk: tuple[int, int]):
        import tensorflow_datasets as tfds
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
    import tensorflow_datasets as tfds
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

    def __init__(self, output_dir: str, num_shards: dict[str, int]):
        self.output_dir = output_dir
        self._num_shards = num_shards

    def process(self, element):
        from deocc_jax.data import features, writer
        (split, index), values = element
        values = sorted(v for v in values if v is not None)
        keys = [k for k, _, _ in values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate record keys in {split} shard {index}")
        n_shards = self._num_shards[split]
        records = [r for _, _, r in values]
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
               "categories": dict(collections.Counter(c for _, c, _ in values))}


def contact_sheet(samples: Iterable[bytes], thumb: int = 128, per_row: int = 4) -> np.ndarray:
    """RGB image: rows of (clean | occluded | mask) triplets with category labels."""
    import cv2
    from deocc_jax.data import features
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
    with FileSystems.create(path) as f:
        f.write(data)


class FinalizeFn(beam.DoFn):
    """Writes dataset_info.json, rejected.tsv and the contact sheet, after all shards."""

    def __init__(self, output_dir: str, info_base: dict, num_read: int):
        self.output_dir = output_dir
        self.info_base = info_base
        self.num_read = num_read

    def process(self, _, shard_results, rejected, accepted, samples):
        import cv2
        rejected = sorted(rejected)
        by_reason = {r: 0 for r in decode.REJECT_REASONS}
        for _, _, reason, _ in rejected:
            by_reason[reason] += 1
        splits: dict[str, dict] = {}
        categories = collections.Counter()
        for r in sorted(shard_results, key=lambda r: (r["split"], r["index"])):
            s = splits.setdefault(r["split"], {"num_records": 0, "num_shards": 0, "categories": {}})
            s["num_records"] += r["num_records"]
            s["num_shards"] += 1
            for c, n in r["categories"].items():
                s["categories"][c] = s["categories"].get(c, 0) + n
                categories[c] += n
        for s in splits.values():
            s["categories"] = dict(sorted(s["categories"].items()))
        num_accepted = len(set(accepted))
        if num_accepted + len(rejected) != self.num_read:
            raise RuntimeError(f"accounting error: read {self.num_read} images but "
                               f"{num_accepted} made pairs and {len(rejected)} were rejected")
        info = dict(self.info_base)
        info.update({
            "num_records": sum(s["num_records"] for s in splits.values()),
            "splits": splits,
            "categories": dict(sorted(categories.items())),
            "images": {"read": self.num_read, "accepted": num_accepted, "rejected": len(rejected)},
            "rejected": by_reason,
        })
        _write_bytes(FileSystems.join(self.output_dir, "dataset_info.json"),
                     (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        lines = ["source_id\tpath\treason\tdetail"] + [
            "\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in row) for row in rejected]
        _write_bytes(FileSystems.join(self.output_dir, "rejected.tsv"), ("\n".join(lines) + "\n").encode())
        sheet = contact_sheet(rec for _, rec in sorted(samples))
        ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        _write_bytes(FileSystems.join(self.output_dir, CONTACT_SHEET), png.tobytes())
        logging.info("data_prep: read %d images, %d records in %s, rejected %s",
                     self.num_read, info["num_records"],
                     {k: v["num_records"] for k, v in splits.items()}, by_reason)
        yield info


def build_pipeline(p: beam.Pipeline, sources: list[Source], output_dir: str, config: PrepConfig,
                   num_shards: int | None = None, occluder_version: str | None = None,
                   tfds_spec: dict | None = None) -> None:
    """Adds the whole data-prep graph to pipeline `p`.

    Args:
      p: the pipeline.
      sources: every input (for TFDS, the ids with ("tfds", ...) locators).
      output_dir: where shards and metadata go (local or a Beam filesystem).
      config: what to produce.
      num_shards: shards per split; default from the number of sources.
      occluder_version: recorded in dataset_info.json.
      tfds_spec: {"name", "split", "data_dir", "image_key"} when reading TFDS.
    """
    from deocc_jax import __version__
    from deocc_jax.data import features

    ids = [s.source_id for s in sources]
    if len(set(ids)) != len(ids):
        raise ValueError("source ids are not unique")
    thresholds = split_thresholds(ids, config.splits)
    shards = shard_counts(ids, thresholds, config, num_shards)
    if tfds_spec:
        n = len(sources)
        chunk = 256
        elements = (p | "TfdsChunks" >> beam.Create([(i, min(i + chunk, n)) for i in range(0, n, chunk)])
                    | "ReadTfds" >> beam.ParDo(ReadTfdsFn(tfds_spec["name"], tfds_spec["split"],
                                                           tfds_spec.get("data_dir"), tfds_spec["image_key"])))
    else:
        elements = p | "Sources" >> beam.Create(sources) | "Spread" >> beam.Reshuffle()
    results = elements | "ProcessImage" >> beam.ParDo(
        ProcessImageFn(config, thresholds, shards)).with_outputs(
            ProcessImageFn.REJECTED, ProcessImageFn.ACCEPTED, main="records")
    # One empty element per shard so that every shard file exists even if empty.
    empty = p | "AllShards" >> beam.Create(
        [((name, i), None) for name, n in sorted(shards.items()) for i in range(n)])
    shard_results = (
        (results.records, empty) | "WithEmpty" >> beam.Flatten()
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir, shards)))
    samples = (
        results.records
        | "SampleKeys" >> beam.Map(lambda kv: (hashlib.sha256(kv[1][0].encode()).hexdigest(), kv[1][2]))
        | "Sample" >> beam.combiners.Top.Smallest(config.num_contact_pairs, key=lambda x: x[0]))
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
    }
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(
             FinalizeFn(output_dir, info_base, len(sources)),
             beam.pvalue.AsList(shard_results),
             beam.pvalue.AsList(results[ProcessImageFn.REJECTED]),
             beam.pvalue.AsList(results[ProcessImageFn.ACCEPTED]),
             beam.pvalue.AsSingleton(samples)))
