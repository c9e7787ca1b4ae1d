"""Writes serialized records as TFRecord and ArrayRecord shards.

Both data_prep (one call per shard, inside a Beam DoFn) and tests use this, so
shard naming and file options are defined once.
"""

from __future__ import annotations

import os
from typing import Iterable

from array_record.python import array_record_module

from deocc_jax.data import features
from deocc_jax.io import atomic

# group_size:1 keeps every record independently addressable, which grain's
# random access (global shuffle) needs; deterministic bytes for equal input.
ARRAY_RECORD_OPTIONS = "group_size:1"


def write_shard(output_dir: str, split: str, index: int, num_shards: int,
                records: Iterable[bytes]) -> dict[str, int]:
    """Writes one shard in both formats; returns {"num_records": n}.

    Each file is written to a hidden temporary sibling, fsynced and renamed
    (`io.atomic`), so a crash never leaves a half-written shard under the final
    name. An existing shard of the same name is replaced: the folder is the
    build's own staging folder, where one is only ever the same shard written
    by a retried Beam bundle (same records, same bytes).
    """
    import tensorflow as tf  # TFRecord framing (CRCs) from the reference writer.

    records = list(records)
    os.makedirs(output_dir, exist_ok=True)
    tf_path = os.path.join(output_dir, features.shard_name(split, "tfrecord", index, num_shards))
    ar_path = os.path.join(output_dir, features.shard_name(split, "array_record", index, num_shards))
    tf_tmp, ar_tmp = atomic.temp_sibling(tf_path), atomic.temp_sibling(ar_path)
    try:
        with tf.io.TFRecordWriter(tf_tmp) as w:
            for r in records:
                w.write(r)
        w = array_record_module.ArrayRecordWriter(ar_tmp, ARRAY_RECORD_OPTIONS)
        try:
            for r in records:
                w.write(r)
        finally:
            w.close()
        atomic.publish_file(tf_tmp, tf_path, replace=True)
        atomic.publish_file(ar_tmp, ar_path, replace=True)
    finally:
        atomic.remove_quietly(tf_tmp)
        atomic.remove_quietly(ar_tmp)
    return {"num_records": len(records)}


def read_array_record(path: str) -> list[bytes]:
    """All records of one ArrayRecord file (tests and tools; training uses grain)."""
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return reader.read_all()
    finally:
        reader.close()


def read_tfrecord(path: str) -> list[bytes]:
    import tensorflow as tf  # TFRecord reading only; the rest of data/ needs no TensorFlow
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]
