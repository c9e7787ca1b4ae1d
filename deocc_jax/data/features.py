"""The one definition of deocc's training record.

`data_prep` writes these records and every reader (grain input, eval, tests)
parses them through this module, so the format lives in exactly one place.

A record is a `tf.train.Example` with:
  clean, occluded: PNG bytes, RGB, resolution x resolution.
  mask:            PNG bytes, one channel, 0 or 255: every pixel the occluder
                   changed (alpha > 0), so clean == occluded where mask == 0.
  alpha:           PNG bytes, one channel, the soft occluder alpha (0..255).
  category:        bytes, occluder category (e.g. b"face_mask", b"paired").
  source_id:       bytes, stable id of the source photo (drives split + seeds).
  variant:         int64, index of the occluded variant of this face.
  landmarks:       float list, 478 x 2 (x, y) in crop pixels.
  padding_fraction: float, share of the crop that lies outside the source
                   photo and was filled FFHQ-style (format 2; records of
                   format 1 read as NaN, "unknown").

Only protobuf and OpenCV are used to encode/decode, never TensorFlow: the
`tf.train.Example` message classes are built here from their descriptor, and
their bytes equal TensorFlow's own (tests check it), so a GPU machine without
TensorFlow reads and writes the same records.

A dataset folder is complete when it holds dataset_info.json and no
`BUILDING_MARKER`: data_prep writes into a hidden sibling folder that carries
the marker and renames it into place only when every file is written, so the
readers here (`list_shards`, `read_dataset_info`) can tell a finished dataset
from the leftovers of a build that was killed, and say so.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Mapping

import cv2
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from deocc_jax import errors

NUM_LANDMARKS = 478
# 2: adds padding_fraction. Readers accept every version up to this one.
FORMAT_VERSION = 2

# name -> (kind, description). Kind is one of "png_rgb", "png_gray", "bytes",
# "int64", "float_list". This dict is written into dataset_info.json.
FEATURE_SPEC: Mapping[str, tuple[str, str]] = {
    "clean": ("png_rgb", "the aligned face, uint8 RGB"),
    "occluded": ("png_rgb", "the same face with an occluder composited, uint8 RGB"),
    "mask": ("png_gray", "0/255: pixels the occluder changed (alpha > 0)"),
    "alpha": ("png_gray", "soft occluder alpha, 0..255"),
    "category": ("bytes", "occluder category"),
    "source_id": ("bytes", "stable id of the source photo"),
    "variant": ("int64", "occluded variant index of this face"),
    "landmarks": ("float_list", f"{NUM_LANDMARKS}x2 landmark (x, y) in crop pixels"),
    "padding_fraction": ("float", "share of the crop outside the source photo (FFHQ-style fill)"),
}
# Features newer than format 1 -> (format that added them, value read from older records).
ADDED_FEATURES: Mapping[str, tuple[int, Any]] = {"padding_fraction": (2, math.nan)}

# A folder holding this file is a dataset being built (or whose build was killed).
BUILDING_MARKER = "_BUILDING.json"
DATASET_INFO = "dataset_info.json"

SPLIT_NAMES = ("train", "validation", "test")
_SHARD_RE = re.compile(r"^(?P<split>[\w-]+)\.(?P<fmt>tfrecord|array_record)-(?P<i>\d{5})-of-(?P<n>\d{5})$")


class RecordError(ValueError):
    """A record that cannot be parsed, with the file it came from when known."""


class IncompleteDatasetError(errors.InputNotFoundError):
    """A dataset folder whose build did not finish (or never started)."""


def _example_classes():
    """tensorflow.{Feature, Features, Example} message classes from protobuf alone.

    The descriptor mirrors tensorflow/core/example/{feature,example}.proto
    (proto3, so repeated scalars are packed), in a private pool so that it
    never clashes with TensorFlow's registration when both are imported.
    """
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="deocc/tf_example.proto", package="tensorflow",
                                             syntax="proto3")

    def message(name, *fields, map_entry=False):
        m = fdp.message_type.add(name=name)
        if map_entry:
            m.options.map_entry = True
        for number, (fname, ftype, label, type_name, oneof) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", F.TYPE_BYTES, rep, None, None))
    message("FloatList", ("value", F.TYPE_FLOAT, rep, None, None))
    message("Int64List", ("value", F.TYPE_INT64, rep, None, None))
    feature = message("Feature",
                      ("bytes_list", F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                      ("float_list", F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                      ("int64_list", F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0))
    feature.oneof_decl.add(name="kind")
    features = message("Features",
                       ("feature", F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                    type_name=".tensorflow.Feature")
    message("Example", ("features", F.TYPE_MESSAGE, opt, ".tensorflow.Features", None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}"))
                 for n in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example"))


BytesList, FloatList, Int64List, Feature, Features, Example = _example_classes()


def shard_name(split: str, fmt: str, index: int, num_shards: int) -> str:
    """File name of one shard: `{split}.{fmt}-NNNNN-of-MMMMM`."""
    if fmt not in ("tfrecord", "array_record"):
        raise ValueError(f"unknown record format {fmt!r}")
    return f"{split}.{fmt}-{index:05d}-of-{num_shards:05d}"


def building_prefix(output_dir: str) -> str:
    """Path prefix of the hidden sibling folders a build of `output_dir` writes into."""
    parent, name = os.path.split(os.path.normpath(output_dir))
    return os.path.join(parent, f".{name}.building-")


def _describe_build(marker_path: str) -> str:
    try:
        with open(marker_path) as f:
            m = json.load(f)
        return (f"the build that was writing it (pid {m.get('pid')} on {m.get('host')}, started "
                f"{m.get('started')}) did not finish")
    except (OSError, ValueError):
        return "the build that was writing it did not finish"


def check_complete(data_dir: str) -> None:
    """Raises a one-sentence error unless `data_dir` is a finished dataset folder.

    Raises:
      errors.InputNotFoundError: the folder does not exist.
      IncompleteDatasetError: it holds the leftovers of an unfinished build
        (the build marker, `*.tmp` shards, or shards without dataset_info.json).
    """
    again = "run `python -m data_prep.build` again to rebuild it"
    if not os.path.isdir(data_dir):
        unfinished = sorted(glob.glob(glob.escape(building_prefix(data_dir)) + "*"))
        if unfinished:
            raise IncompleteDatasetError(
                f"dataset {data_dir} does not exist: the only build of it is the unfinished "
                f"{unfinished[-1]} ({_describe_build(os.path.join(unfinished[-1], BUILDING_MARKER))}); "
                f"{again}")
        raise errors.InputNotFoundError(
            f"data directory {data_dir!r} does not exist; prepare one with "
            "`python -m data_prep.build --output_dir=...`")
    marker = os.path.join(data_dir, BUILDING_MARKER)
    if os.path.exists(marker):
        raise IncompleteDatasetError(
            f"{data_dir} is an incomplete dataset: {_describe_build(marker)}; {again}")
    tmp = sorted(n for n in os.listdir(data_dir) if n.endswith(".tmp"))
    if tmp:
        raise IncompleteDatasetError(
            f"{data_dir} is an incomplete dataset: a build stopped while writing {tmp[0]} "
            f"(and {len(tmp) - 1} more unfinished files); {again}")


def list_shards(data_dir: str, split: str, fmt: str = "array_record") -> list[str]:
    """Sorted shard paths of a split; a clear error when none or some are missing.

    Raises:
      IncompleteDatasetError: `data_dir` is the leftover of an unfinished build.
      FileNotFoundError: no shards for this split, or some of them are missing.
    """
    check_complete(data_dir)
    pattern = re.compile(rf"^{re.escape(split)}\.{re.escape(fmt)}-\d{{5}}-of-\d{{5}}$")
    paths = sorted(p for p in glob.glob(os.path.join(glob.escape(data_dir), f"{split}.{fmt}-*"))
                   if pattern.match(os.path.basename(p)))
    if not paths:
        raise errors.InputNotFoundError(
            f"no {fmt} shards for split {split!r} in {data_dir!r} "
            f"(expected files named {shard_name(split, fmt, 0, 1)} ...)")
    counts = {_SHARD_RE.match(os.path.basename(p)).group("n") for p in paths}
    if len(counts) != 1 or len(paths) != int(counts.pop()):
        raise IncompleteDatasetError(
            f"incomplete shard set for split {split!r} in {data_dir!r}: found "
            f"{len(paths)} files: {[os.path.basename(p) for p in paths]}")
    return paths


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 HxW, HxWx1 or HxWx3 (RGB) image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    # Fixed compression level: the same pixels always give the same bytes. Level 1
    # costs a third of level 6 at 256 px for files about 2% larger.
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """uint8 HxWxC array (RGB for 3 channels) from PNG bytes."""
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise RecordError("PNG bytes could not be decoded")
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image[..., None]


@dataclasses.dataclass(frozen=True)
class Pair:
    """One training example in memory."""
    clean: np.ndarray      # uint8 [H, W, 3]
    occluded: np.ndarray   # uint8 [H, W, 3]
    mask: np.ndarray       # uint8 [H, W, 1], 0 or 255
    alpha: np.ndarray      # uint8 [H, W, 1]
    category: str
    source_id: str
    variant: int
    landmarks: np.ndarray  # float32 [478, 2]
    padding_fraction: float = 0.0


def encode_example(pair: Pair) -> bytes:
    """Serialized tf.train.Example; byte-identical for identical pairs in any process."""
    def b(v: bytes) -> Feature:
        return Feature(bytes_list=BytesList(value=[v]))

    landmarks = np.asarray(pair.landmarks, np.float32)
    if landmarks.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [{NUM_LANDMARKS}, 2], got {landmarks.shape}")
    features = {
        "clean": b(encode_png(pair.clean)),
        "occluded": b(encode_png(pair.occluded)),
        "mask": b(encode_png(pair.mask)),
        "alpha": b(encode_png(pair.alpha)),
        "category": b(pair.category.encode()),
        "source_id": b(pair.source_id.encode()),
        "variant": Feature(int64_list=Int64List(value=[int(pair.variant)])),
        "landmarks": Feature(float_list=FloatList(value=landmarks.reshape(-1).tolist())),
        "padding_fraction": Feature(float_list=FloatList(value=[float(pair.padding_fraction)])),
    }
    example = Example(features=Features(feature=features))
    # Map fields serialize in hash order, which differs between processes.
    return example.SerializeToString(deterministic=True)


def decode_example(serialized: bytes, source: str = "<record>") -> dict[str, Any]:
    """Numpy dict of one record. `source` names the file in error messages."""
    try:
        example = Example.FromString(serialized)
        f = example.features.feature
        missing = [k for k in FEATURE_SPEC if k not in f and k not in ADDED_FEATURES]
        if missing:
            raise RecordError(f"missing features {missing}")
        out = {
            "clean": decode_png(f["clean"].bytes_list.value[0], 3),
            "occluded": decode_png(f["occluded"].bytes_list.value[0], 3),
            "mask": decode_png(f["mask"].bytes_list.value[0], 1),
            "alpha": decode_png(f["alpha"].bytes_list.value[0], 1),
            "category": f["category"].bytes_list.value[0].decode(),
            "source_id": f["source_id"].bytes_list.value[0].decode(),
            "variant": int(f["variant"].int64_list.value[0]),
            "landmarks": np.asarray(f["landmarks"].float_list.value, np.float32).reshape(NUM_LANDMARKS, 2),
            "padding_fraction": (float(f["padding_fraction"].float_list.value[0])
                                 if "padding_fraction" in f else ADDED_FEATURES["padding_fraction"][1]),
        }
    except RecordError as e:
        raise RecordError(f"{source}: {e}") from None
    except Exception as e:  # protobuf DecodeError, IndexError, ...
        raise RecordError(f"{source}: not a deocc record ({type(e).__name__}: {e})") from None
    return out


def feature_spec_json() -> dict[str, dict[str, str]]:
    """The spec as written into dataset_info.json."""
    return {k: {"kind": kind, "description": desc} for k, (kind, desc) in FEATURE_SPEC.items()}


def read_dataset_info(data_dir: str) -> dict[str, Any]:
    """dataset_info.json of a finished dataset, with a one-sentence error otherwise.

    Raises:
      IncompleteDatasetError: the folder is the leftover of an unfinished build.
      errors.InputNotFoundError: no such folder, or no dataset_info.json in it.
      errors.InvalidInputError: the file is not valid JSON, or was written by a
        newer deocc whose format this one cannot read.
    """
    check_complete(data_dir)
    path = os.path.join(data_dir, DATASET_INFO)
    if not os.path.exists(path):
        if any(_SHARD_RE.match(n) for n in os.listdir(data_dir)):
            raise IncompleteDatasetError(
                f"{data_dir} is an incomplete dataset: it has shards but no {DATASET_INFO}, "
                "so its build did not finish; run `python -m data_prep.build` again")
        raise errors.InputNotFoundError(
            f"{path} not found: {data_dir!r} is not a dataset written by `python -m data_prep.build`")
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError as e:
        raise errors.InvalidInputError(f"{path} is not valid JSON ({e})") from None
    version = int(info.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise errors.InvalidInputError(
            f"{data_dir} holds records of format {version}, newer than this deocc reads "
            f"(up to {FORMAT_VERSION}); update deocc")
    return info
