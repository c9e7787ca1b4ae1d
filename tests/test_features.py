"""The record format: lossless round trip, bytes that repeat across processes, clear errors."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from deocc_jax import errors
from deocc_jax.data import features, writer


def _pair_from_dict(d: dict) -> features.Pair:
    return features.Pair(**{k: d[k] for k in (f.name for f in dataclasses.fields(features.Pair))})


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
    assert got["padding_fraction"] == 0.0
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


# --- protobuf without TensorFlow (D) ------------------------------------------

def test_bytes_equal_tensorflows_own_serialization():
    from tensorflow.core.example import example_pb2, feature_pb2
    pair = _pair(5)
    ours = features.encode_example(pair)
    parsed = example_pb2.Example.FromString(ours)  # TensorFlow reads our bytes...
    assert parsed.features.feature["source_id"].bytes_list.value[0] == b"img5.jpg"
    # ...and writes the same bytes for the same message.
    theirs = example_pb2.Example(features=feature_pb2.Features(feature={
        k: feature_pb2.Feature.FromString(v.SerializeToString())
        for k, v in features.Example.FromString(ours).features.feature.items()}))
    assert theirs.SerializeToString(deterministic=True) == ours
    # A record TensorFlow made from scratch reads back through ours.
    tf_made = example_pb2.Example(features=feature_pb2.Features(feature={
        "x": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[0.5, -2.0])),
        "y": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[7, -1])),
        "z": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[b"ab"]))}))
    mine = features.Example.FromString(tf_made.SerializeToString(deterministic=True))
    assert list(mine.features.feature["x"].float_list.value) == [0.5, -2.0]
    assert mine.SerializeToString(deterministic=True) == tf_made.SerializeToString(deterministic=True)


def test_records_read_and_write_without_tensorflow():
    """A machine without TensorFlow (a GPU box) reads records: features never imports it."""
    code = ("import sys; sys.modules['tensorflow'] = None; sys.path.insert(0, %r); "
            "from tests.test_features import _pair; from deocc_jax.data import features; "
            "d = features.decode_example(features.encode_example(_pair(2))); "
            "assert d['source_id'] == 'img2.jpg'; "
            "assert not any(m == 'tensorflow' or m.startswith('tensorflow.') "
            "for m, v in sys.modules.items() if v is not None); print('ok')") % os.getcwd()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd())
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# --- format versions ------------------------------------------------------------

def test_format_1_records_still_read():
    pair = _pair(1)
    ex = features.Example.FromString(features.encode_example(pair))
    del ex.features.feature["padding_fraction"]  # what format 1 wrote
    d = features.decode_example(ex.SerializeToString(deterministic=True))
    assert np.isnan(d["padding_fraction"]) and d["source_id"] == "img1.jpg"
    np.testing.assert_array_equal(d["clean"], pair.clean)


def test_padding_fraction_round_trips():
    pair = features.Pair(**{**_pair_from_dict(features.decode_example(
        features.encode_example(_pair(3)))).__dict__, "padding_fraction": 0.375})
    assert features.decode_example(features.encode_example(pair))["padding_fraction"] == 0.375


def test_dataset_info_versions(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"format_version": 1, "resolution": 64}')
    assert features.read_dataset_info(str(tmp_path))["resolution"] == 64
    (tmp_path / "dataset_info.json").write_text(
        '{"format_version": %d}' % (features.FORMAT_VERSION + 1))
    with pytest.raises(errors.InvalidInputError, match="newer than this deocc reads"):
        features.read_dataset_info(str(tmp_path))


# --- unfinished datasets --------------------------------------------------------

def _one_line(e) -> str:
    line = errors.one_line(e.value)
    assert "\n" not in str(e.value) and len(line) < 400, line
    return line


def test_readers_say_a_killed_build_is_incomplete(tmp_path):
    d = tmp_path / ".data.building-abc"
    writer.write_shard(str(d), "train", 0, 1, [features.encode_example(_pair(0))])
    (d / features.BUILDING_MARKER).write_text(
        '{"pid": 4242, "host": "box", "started": "2026-11-25T10:00:00+00:00"}')
    for read in (lambda: features.list_shards(str(d), "train"),
                 lambda: features.read_dataset_info(str(d))):
        with pytest.raises(features.IncompleteDatasetError) as e:
            read()
        line = _one_line(e)
        assert "incomplete dataset" in line and "pid 4242 on box" in line and "data_prep.build" in line
    # The dataset's own name: it does not exist yet, and the reader points at the leftovers.
    with pytest.raises(features.IncompleteDatasetError) as e:
        features.list_shards(str(tmp_path / "data"), "train")
    assert "unfinished" in _one_line(e) and ".data.building-abc" in _one_line(e)


def test_leftover_tmp_shards_are_reported_not_crashed_on(tmp_path):
    """A build killed before this version wrote shards under *.tmp names in place; training
    tripped over them with "'NoneType' object has no attribute 'group'"."""
    writer.write_shard(str(tmp_path), "train", 0, 2, [features.encode_example(_pair(0))])
    (tmp_path / "train.array_record-00001-of-00002.tmp").write_bytes(b"partial")
    with pytest.raises(features.IncompleteDatasetError) as e:
        features.list_shards(str(tmp_path), "train")
    assert "stopped while writing train.array_record-00001-of-00002.tmp" in _one_line(e)
    (tmp_path / "train.array_record-00001-of-00002.tmp").unlink()
    (tmp_path / "dataset_info.json").unlink(missing_ok=True)
    with pytest.raises(features.IncompleteDatasetError, match="no dataset_info.json"):
        features.read_dataset_info(str(tmp_path))
