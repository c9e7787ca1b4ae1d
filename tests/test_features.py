"""The record format: lossless round trip, bytes that repeat across processes, clear errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from deocc_jax.data import features, writer


def _pair(seed=0, size=16):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[4:10, 3:12] = 255
    occluded = np.where(mask > 0, 255 - clean, clean).astype(np.uint8)
    return features.Pair(clean=clean, occluded=occluded, mask=mask, alpha=mask // 2,
                         category="face_mask", source_id=f"img{seed}.jpg", variant=seed,
                         landmarks=rng.uniform(0, size, (features.NUM_LANDMARKS, 2)).astype(np.float32))


def test_round_trip_is_lossless():
    pair = _pair()
    got = features.decode_example(features.encode_example(pair))
    for key in ("clean", "occluded", "mask", "alpha", "landmarks"):
        np.testing.assert_array_equal(got[key], getattr(pair, key), err_msg=key)
    assert (got["category"], got["source_id"], got["variant"]) == ("face_mask", "img0.jpg", 0)
    assert set(got) == set(features.FEATURE_SPEC)


def test_bytes_repeat_across_processes():
    # Protobuf map order depends on a per-process hash seed; deterministic=True must hide it.
    code = ("import sys, hashlib; sys.path.insert(0, %r); from tests.test_features import _pair; "
            "from deocc_jax.data import features; "
            "print(hashlib.sha256(features.encode_example(_pair(3))).hexdigest())") % os.getcwd()
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=os.getcwd())
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1


def test_corrupt_record_names_its_source():
    with pytest.raises(features.RecordError, match="shard-7"):
        features.decode_example(b"\x00not a record", source="shard-7")


def test_shards_written_in_both_formats_and_listed(tmp_path):
    records = [features.encode_example(_pair(i)) for i in range(3)]
    writer.write_shard(str(tmp_path), "train", 0, 2, records[:2])
    with pytest.raises(FileNotFoundError, match="incomplete shard set"):
        features.list_shards(str(tmp_path), "train")
    writer.write_shard(str(tmp_path), "train", 1, 2, records[2:])
    paths = features.list_shards(str(tmp_path), "train")
    assert [os.path.basename(p) for p in paths] == [
        "train.array_record-00000-of-00002", "train.array_record-00001-of-00002"]
    read = writer.read_array_record(paths[0]) + writer.read_array_record(paths[1])
    assert read == records
    tf_paths = features.list_shards(str(tmp_path), "train", fmt="tfrecord")
    assert sum((writer.read_tfrecord(p) for p in tf_paths), []) == records
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_data_dir_error_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_prep.build"):
        features.list_shards(str(tmp_path / "nope"), "train")
    with pytest.raises(FileNotFoundError, match="no array_record shards"):
        features.list_shards(str(tmp_path), "validation")
