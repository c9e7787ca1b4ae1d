"""The one definition of deocc's training record.

`data_prep` writes these records and every reader (grain input, eval, tests)
parses them through this module, so the format lives in exactly one place.

A record is a `tf.train.Example` with:
  clean, occluded: PNG bytes, RGB, resolution x resolution.
  mask:            PNG bytes, one channel, 0 or 255: every pixel the occluder
                   changed (alpha > 0), so clean == occluded where mask == 0.
  alpha:           PNG bytes, one channel, the soft occluder alpha (0..255).
  category:        bytes, occluder category (e.g. b"face_mask").
  source_id:       bytes, stable id of the source photo (drives split + seeds).
  variant:         int64, index of the occluded variant of this face.
  landmarks:       float list, 478 x 2 (x, y) in crop pixels.

Only protobuf and OpenCV are used to encode/decode, so grain workers do not
need TensorFlow's runtime.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Mapping

import cv2
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

NUM_LANDMARKS = 478
FORMAT_VERSION = 1

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
}

SPLIT_NAMES = ("train", "validation", "test")
_SHARD_RE = re.compile(r"^(?P<split>[\w-]+)\.(?P<fmt>tfrecord|array_record)-(?P<i>\d{5})-of-(?P<n>\d{5})$")


class RecordError(ValueError):
    """A record that cannot be parsed, with the file it came from when known."""


def shard_name(split: str, fmt: str, index: int, num_shards: int) -> str:
    """File name of one shard: `{split}.{fmt}-NNNNN-of-MMMMM`."""
    if fmt not in ("tfrecord", "array_record"):
        raise ValueError(f"unknown record format {fmt!r}")
    return f"{split}.{fmt}-{index:05d}-of-{num_shards:05d}"


def list_shards(data_dir: str, split: str, fmt: str = "array_record") -> list[str]:
    """Sorted shard paths of a split; a clear error when none or some are missing."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data directory {data_dir!r} does not exist; prepare one with "
            "`python -m data_prep.build --output_dir=...`")
    paths = sorted(glob.glob(os.path.join(data_dir, f"{split}.{fmt}-*-of-*")))
    if not paths:
        raise FileNotFoundError(
            f"no {fmt} shards for split {split!r} in {data_dir!r} "
            f"(expected files named {shard_name(split, fmt, 0, 1)} ...)")
    counts = {_SHARD_RE.match(os.path.basename(p)).group("n") for p in paths}
    if len(counts) != 1 or len(paths) != int(counts.pop()):
        raise FileNotFoundError(
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


def encode_example(pair: Pair) -> bytes:
    """Serialized tf.train.Example; byte-identical for identical pairs in any process."""
    def b(v: bytes) -> feature_pb2.Feature:
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[v]))

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
        "variant": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(pair.variant)])),
        "landmarks": feature_pb2.Feature(
            float_list=feature_pb2.FloatList(value=landmarks.reshape(-1).tolist())),
    }
    example = example_pb2.Example(features=feature_pb2.Features(feature=features))
    # Map fields serialize in hash order, which differs between processes.
    return example.SerializeToString(deterministic=True)


def decode_example(serialized: bytes, source: str = "<record>") -> dict[str, Any]:
    """Numpy dict of one record. `source` names the file in error messages."""
    try:
        example = example_pb2.Example.FromString(serialized)
        f = example.features.feature
        missing = [k for k in FEATURE_SPEC if k not in f]
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
        }
    except RecordError as e:
        raise RecordError(f"{source}: {e}") from None
    except Exception as e:  # protobuf DecodeError, IndexError, ...
        raise RecordError(f"{source}: not a deocc record ({type(e).__name__}: {e})") from None
    return out


def pair_from_dict(d: Mapping[str, Any]) -> Pair:
    return Pair(**{k: d[k] for k in (f.name for f in dataclasses.fields(Pair))})


def feature_spec_json() -> dict[str, dict[str, str]]:
    """The spec as written into dataset_info.json."""
    return {k: {"kind": kind, "description": desc} for k, (kind, desc) in FEATURE_SPEC.items()}


def read_dataset_info(data_dir: str) -> dict[str, Any]:
    """dataset_info.json of a prepared dataset, with a clear error if absent."""
    import json
    path = os.path.join(data_dir, "dataset_info.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir!r} is not a dataset written by `python -m data_prep.build`")
    with open(path) as f:
        return json.load(f)
