"""End to end: `build_dataset` on real faces plus broken files, on DirectRunner."""

import hashlib
import json
import os
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from data_prep import build, pipeline
from deocc_jax.data import features, writer

PHOTOS = ("0.jpg", "1.jpg", "10.jpg", "100.jpg", "101.jpg", "105.jpg", "109.jpg", "11.jpg")
BAD = {  # file -> expected rejection reason
    "bad/empty.jpg": "unreadable",
    "bad/truncated.jpg": "unreadable",
    "bad/text.jpg": "not_an_image",
    "bad/huge.png": "too_large",
    "bad/texture.png": "no_face",
}
KW = dict(resolution=64, variants_per_face=2, seed=7, occluders_dir=None, max_pixels=2_000_000)


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, faces_dir):
    d = tmp_path_factory.mktemp("photos")
    (d / "people").mkdir()
    (d / "bad").mkdir()
    for p in PHOTOS:
        shutil.copy(faces_dir / p, d / "people" / p)
    (d / "bad/empty.jpg").write_bytes(b"")
    data = (faces_dir / "0.jpg").read_bytes()
    (d / "bad/truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "bad/text.jpg").write_text("this is not a photo\n")
    cv2.imwrite(str(d / "bad/huge.png"), np.zeros((1500, 1500), np.uint8))  # 2.25 MP > limit
    yy, xx = np.mgrid[0:200, 0:300]  # wood-like stripes: a photo with no face
    cv2.imwrite(str(d / "bad/texture.png"), (128 + 60 * np.sin(xx / 7.0 + yy / 23.0)).astype(np.uint8))
    (d / "notes.txt").write_text("not an image extension: skipped, not counted")
    return d


@pytest.fixture(scope="module")
def built(input_dir, tmp_path_factory, occluders_dir):
    out = tmp_path_factory.mktemp("ds") / "a"
    info = build.build_dataset(str(input_dir), str(out), **{**KW, "occluders_dir": str(occluders_dir)},
                               pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    return out, info


def _read_split(out, split):
    recs = []
    for path in features.list_shards(str(out), split, "array_record"):
        recs += writer.read_array_record(path)
    return recs


def test_outputs_and_accounting(built):
    out, info = built
    assert info == json.loads((out / "dataset_info.json").read_text())
    assert info["resolution"] == 64 and info["seed"] == 7
    assert info["feature_spec"] == features.feature_spec_json()
    assert len(info["occluder_set"]["version"]) == 64
    n_bad = len(BAD)
    assert info["images"] == {"read": len(PHOTOS) + n_bad, "accepted": len(PHOTOS), "rejected": n_bad}
    assert info["rejected"] == {"unreadable": 2, "not_an_image": 1, "too_large": 1, "no_face": 1,
                                "face_too_small": 0}
    total = 0
    for split, s in info["splits"].items():
        recs = _read_split(out, split)
        tf_recs = [r for p in features.list_shards(str(out), split, "tfrecord") for r in writer.read_tfrecord(p)]
        assert recs == tf_recs  # same records, same order, in both formats
        assert len(recs) == s["num_records"]
        cats = {}
        for r in recs:
            c = features.decode_example(r)["category"]
            cats[c] = cats.get(c, 0) + 1
        assert cats == s["categories"]
        total += len(recs)
    assert total == info["num_records"] == len(PHOTOS) * KW["variants_per_face"]
    # Tiny input: every split still gets a photo.
    assert all(info["splits"][n]["num_records"] > 0 for n in ("train", "validation", "test"))


def test_rejected_tsv_names_each_bad_file(built):
    out, _ = built
    rows = [line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines()[1:]]
    assert {r[0]: r[2] for r in rows} == BAD
    for sid, path, reason, detail in rows:
        assert path.endswith(sid) and detail


def test_records_are_valid_pairs_without_split_leakage(built):
    out, info = built
    seen = {}
    for split in info["splits"]:
        for r in _read_split(out, split):
            d = features.decode_example(r)
            assert d["clean"].shape == (64, 64, 3)
            m = d["mask"][..., 0]
            np.testing.assert_array_equal(d["occluded"][m == 0], d["clean"][m == 0])
            assert (m > 0).any() and set(np.unique(m)) <= {0, 255}
            np.testing.assert_array_equal(m > 0, d["alpha"][..., 0] > 0)
            assert seen.setdefault(d["source_id"], split) == split  # no face in two splits
            assert 0 <= d["landmarks"].min() and d["landmarks"].max() < 64 * 1.2
    assert sorted(seen) == sorted(f"people/{p}" for p in PHOTOS)


def test_contact_sheet(built):
    out, info = built
    sheet = cv2.imread(str(out / pipeline.CONTACT_SHEET))
    assert sheet is not None and sheet.shape[1] >= 3 * 64


def test_records_parse_with_tf_data_and_grain(built):
    import grain
    import tensorflow as tf
    out, info = built
    spec = {k: (tf.io.FixedLenFeature([features.NUM_LANDMARKS * 2], tf.float32) if kind == "float_list"
                else tf.io.FixedLenFeature([], tf.int64 if kind == "int64" else tf.string))
            for k, (kind, _) in features.FEATURE_SPEC.items()}
    ds = tf.data.TFRecordDataset(features.list_shards(str(out), "train", "tfrecord"))
    n = 0
    for ex in ds.map(lambda r: tf.io.parse_single_example(r, spec)):
        img = tf.io.decode_png(ex["occluded"], channels=3)
        assert img.shape == (64, 64, 3)
        n += 1
    assert n == info["splits"]["train"]["num_records"]
    src = grain.sources.ArrayRecordDataSource(features.list_shards(str(out), "train"))
    assert len(src) == n
    assert features.decode_example(src[n - 1])["variant"] in (0, 1)


def _digest(out) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pathlib.Path(out).iterdir())
            if ".tfrecord-" in p.name or ".array_record-" in p.name or p.name == "rejected.tsv"}


@pytest.mark.slow
def test_same_bytes_with_two_worker_processes(built, input_dir, tmp_path, occluders_dir):
    out, info = built
    out2 = tmp_path / "b"
    info2 = build.build_dataset(str(input_dir), str(out2), **{**KW, "occluders_dir": str(occluders_dir)},
                                pipeline_args=["--direct_running_mode=multi_processing",
                                               "--direct_num_workers=2"])
    assert _digest(out) == _digest(out2) and len(_digest(out)) >= 6
    assert info2 == info


def test_refuses_to_overwrite_without_flag(built, input_dir):
    out, _ = built
    with pytest.raises(FileExistsError, match="--overwrite"):
        build.build_dataset(str(input_dir), str(out), **KW)


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        build.build_dataset(str(tmp_path / "no-such-dir"), str(tmp_path / "o"), **KW)


def test_default_pipeline_args():
    assert "--direct_running_mode=in_memory" in build.default_pipeline_args([], 10)
    assert "--direct_num_workers=0" in build.default_pipeline_args([], 1000)
    assert build.default_pipeline_args(["--runner=DataflowRunner"], 1000) == ["--runner=DataflowRunner"]
    assert build.default_pipeline_args(["--direct_running_mode", "multi_threading"], 5) == [
        "--direct_running_mode", "multi_threading", "--direct_num_workers=0"]
    assert build.default_pipeline_args(["--direct_num_workers=3"], 5) == ["--direct_num_workers=3"]


def test_tfds_input(tmp_path, faces_dir):
    """tfds:NAME[:SPLIT] reads a prepared TFDS dataset through the same pipeline."""
    import tensorflow_datasets as tfds

    photos = [cv2.cvtColor(cv2.imread(str(faces_dir / p)), cv2.COLOR_BGR2RGB) for p in PHOTOS[:3]]

    class DeoccTinyFaces(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"label": tfds.features.ClassLabel(num_classes=2), "image": tfds.features.Image()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, img in enumerate(photos):
                yield i, {"image": img, "label": 0}

    data_dir = tmp_path / "tfds"
    info = build.build_dataset("tfds:deocc_tiny_faces:train", str(tmp_path / "out"), resolution=64,
                               variants_per_face=1, tfds_data_dir=str(data_dir))
    assert info["images"] == {"read": 3, "accepted": 3, "rejected": 0}
    ids = sorted(features.decode_example(r)["source_id"]
                 for s in info["splits"] for r in _read_split(tmp_path / "out", s))
    assert ids == [f"tfds/deocc_tiny_faces/train/{i:09d}" for i in range(3)]
