"""End to end: `build_dataset` on real faces plus broken and tricky entries, on DirectRunner;
the build's safety (lock, atomic replace, killed builds), paired input, and the binary's errors."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from data_prep import alignment, build_lib, pipeline, sources
from deocc_jax import errors
from deocc_jax.data import features, writer
from deocc_jax.faces import FaceAnalyzer, align, largest_face
import logging
from PIL import Image
from tests import pairs_fixture as pf

REPO = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ("0.jpg", "1.jpg", "10.jpg", "100.jpg", "101.jpg", "105.jpg", "109.jpg", "11.jpg")
BAD = {  # entry -> expected rejection reason
    "bad/empty.jpg": "unreadable",
    "bad/truncated.jpg": "unreadable",
    "bad/text.jpg": "not_an_image",
    "bad/huge.png": "too_large",
    "bad/texture.png": "no_face",
    "bad/chin_cut.jpg": "insufficient_context",    # the photo ends at the mouth
    "bad/dangling.jpg": "broken_link",
    "loop": "link_loop",                           # ln -s . loop
    "people/again.jpg": "duplicate",               # a link to people/0.jpg
    "notes.txt": "unsupported_extension",
}
GROUP_BY = r"^named/(.+)_\d{4}\.jpg$"
KW = dict(resolution=64, variants_per_face=2, seed=7, occluders_dir=None, max_pixels=2_000_000,
          group_by=GROUP_BY, jpeg_prob=0.5)
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _read(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _write(path, rgb) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, faces_dir):
    d = tmp_path_factory.mktemp("photos")
    for sub in ("people", "bad", "named", "dups"):
        (d / sub).mkdir()
    for p in PHOTOS:
        shutil.copy(faces_dir / p, d / "people" / p)
    # Not UTF-8 (it once crashed the whole build).
    with open(os.path.join(os.fsencode(str(d / "people")), b"caf\xe9.jpg"), "wb") as f:
        f.write((faces_dir / "104.jpg").read_bytes())
    # One person, two photos: --group_by keeps them in one split.
    shutil.copy(faces_dir / "106.jpg", d / "named" / "Jane_Doe_0001.jpg")
    shutil.copy(faces_dir / "107.jpg", d / "named" / "Jane_Doe_0002.jpg")
    # A re-saved, mirrored, smaller, recoloured copy of people/100.jpg: a near-duplicate.
    img = _read(faces_dir / "100.jpg")
    small = cv2.resize(img[:, ::-1], None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    _write(d / "dups" / "copy.jpg", np.clip(small * 0.9 + 15, 0, 255).astype(np.uint8))
    (d / "bad/empty.jpg").write_bytes(b"")
    data = (faces_dir / "0.jpg").read_bytes()
    (d / "bad/truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "bad/text.jpg").write_text("this is not a photo\n")
    cv2.imwrite(str(d / "bad/huge.png"), np.zeros((1500, 1500), np.uint8))  # 2.25 MP > limit
    yy, xx = np.mgrid[0:200, 0:300]  # wood-like stripes: a photo with no face
    cv2.imwrite(str(d / "bad/texture.png"), (128 + 60 * np.sin(xx / 7.0 + yy / 23.0)).astype(np.uint8))
    face = _read(faces_dir / "10.jpg")
    with FaceAnalyzer() as fa:
        x0, y0, x1, y1 = largest_face(fa.detect(face)).bbox
    _write(d / "bad/chin_cut.jpg", face[: int(y0 + 0.7 * (y1 - y0))])
    os.symlink("nowhere.jpg", d / "bad/dangling.jpg")
    os.symlink(".", d / "loop")
    os.symlink("0.jpg", d / "people/again.jpg")
    (d / "notes.txt").write_text("not an image extension: counted as rejected")
    return d


@pytest.fixture(scope="module")
def built(input_dir, tmp_path_factory, occluders_dir):
    out = tmp_path_factory.mktemp("ds") / "a"
    info = build_lib.build_dataset(str(input_dir), str(out), **{**KW, "occluders_dir": str(occluders_dir)},
                                   pipeline_args=IN_PROCESS)
    return out, info


def _read_split(out, split):
    recs = []
    for path in features.list_shards(str(out), split, "array_record"):
        recs += writer.read_array_record(path)
    return recs


def _records(out, info):
    return {split: [features.decode_example(r) for r in _read_split(out, split)] for split in info["splits"]}


GOOD = len(PHOTOS) + 4  # + café, two named, the near-duplicate copy


def test_outputs_and_accounting(built):
    out, info = built
    assert info == json.loads((out / "dataset_info.json").read_text())
    assert info["resolution"] == 64 and info["seed"] == 7 and info["format_version"] == 2
    assert info["feature_spec"] == features.feature_spec_json()
    assert len(info["occluder_set"]["version"]) == 64
    # Every entry found is accounted for: read = accepted + rejected, by reason.
    assert info["images"] == {"read": GOOD + len(BAD), "accepted": GOOD, "rejected": len(BAD)}
    expected = {r: 0 for r in alignment.REJECT_REASONS}
    for reason in BAD.values():
        expected[reason] += 1
    expected["unreadable"] = 2
    assert info["rejected"] == expected
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
    assert total == info["num_records"] == GOOD * KW["variants_per_face"]
    # Occluder kinds refine the categories: they add up to them, category by category.
    by_category = {}
    for kind, n in info["occluder_kinds"].items():
        by_category[kind.split(":")[0]] = by_category.get(kind.split(":")[0], 0) + n
    assert by_category == info["categories"]
    # Tiny input: every split still gets a photo.
    assert all(info["splits"][n]["num_records"] > 0 for n in ("train", "validation", "test"))
    assert not list(out.parent.glob(".a.building-*"))  # nothing left beside it


def test_rejected_tsv_names_each_bad_entry(built):
    out, _ = built
    rows = [line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines()[1:]]
    assert {r[0]: r[2] for r in rows} == BAD
    for sid, path, reason, detail in rows:
        assert path.endswith(sid) and detail


def test_records_are_valid_pairs_without_split_leakage(built):
    out, info = built
    seen = {}
    for split, recs in _records(out, info).items():
        for d in recs:
            assert d["clean"].shape == (64, 64, 3)
            m = d["mask"][..., 0]
            np.testing.assert_array_equal(d["occluded"][m == 0], d["clean"][m == 0])
            assert (m > 0).any() and set(np.unique(m)) <= {0, 255}
            np.testing.assert_array_equal(m > 0, d["alpha"][..., 0] > 0)
            assert seen.setdefault(d["source_id"], split) == split  # no face in two splits
            assert 0 <= d["landmarks"].min() and d["landmarks"].max() < 64 * 1.2
            assert 0.0 <= d["padding_fraction"] <= 0.65
    assert sorted(seen) == sorted([f"people/{p}" for p in PHOTOS] + [
        "people/caf\\xe9.jpg", "named/Jane_Doe_0001.jpg", "named/Jane_Doe_0002.jpg", "dups/copy.jpg"])


def test_a_person_and_a_photos_copies_share_a_split(built):
    out, info = built
    split_of = {d["source_id"]: split for split, recs in _records(out, info).items() for d in recs}
    assert split_of["named/Jane_Doe_0001.jpg"] == split_of["named/Jane_Doe_0002.jpg"]
    assert split_of["dups/copy.jpg"] == split_of["people/100.jpg"]
    g = info["groups"]
    assert g["near_duplicate_pairs"] == 1 and g["named_groups_with_several_faces"] == 1
    assert g["faces"] == GOOD and g["groups"] == GOOD - 2


def test_contact_sheet(built):
    out, info = built
    sheet = cv2.imread(str(out / pipeline.CONTACT_SHEET))
    assert sheet is not None and sheet.shape[1] >= 3 * 64


def test_records_parse_with_tf_data_and_grain(built):
    import grain
    import tensorflow as tf
    out, info = built
    kinds = {"float_list": tf.io.FixedLenFeature([features.NUM_LANDMARKS * 2], tf.float32),
             "float": tf.io.FixedLenFeature([], tf.float32), "int64": tf.io.FixedLenFeature([], tf.int64)}
    spec = {k: kinds.get(kind, tf.io.FixedLenFeature([], tf.string))
            for k, (kind, _) in features.FEATURE_SPEC.items()}
    ds = tf.data.TFRecordDataset(features.list_shards(str(out), "train", "tfrecord"))
    n = 0
    for ex in ds.map(lambda r: tf.io.parse_single_example(r, spec)):
        img = tf.io.decode_png(ex["occluded"], channels=3)
        assert img.shape == (64, 64, 3) and 0 <= float(ex["padding_fraction"]) < 1
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
    info2 = build_lib.build_dataset(str(input_dir), str(out2), **{**KW, "occluders_dir": str(occluders_dir)},
                                    pipeline_args=["--direct_running_mode=multi_processing",
                                                   "--direct_num_workers=2"])
    assert _digest(out) == _digest(out2) and len(_digest(out)) >= 6
    assert info2 == info


# --- the output folder ----------------------------------------------------------

def test_refuses_to_overwrite_without_flag(built, input_dir):
    out, _ = built
    with pytest.raises(errors.OutputExistsError, match="--overwrite"):
        build_lib.build_dataset(str(input_dir), str(out), **KW)


def test_a_failed_overwrite_keeps_the_old_dataset(built, input_dir, tmp_path, monkeypatch):
    out, info = built
    copy = tmp_path / "a"
    shutil.copytree(out, copy)
    before = _digest(copy)

    def broken(self, element, *args):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(pipeline.WriteShardFn, "process", broken)
    with pytest.raises(Exception, match="disk full"):
        build_lib.build_dataset(str(input_dir), str(copy), **KW, overwrite=True, pipeline_args=IN_PROCESS)
    assert _digest(copy) == before and features.read_dataset_info(str(copy)) == info
    assert not list(tmp_path.glob(".a.building-*"))


def test_a_second_build_into_the_same_folder_refuses(input_dir, tmp_path):
    out = tmp_path / "ds"
    with build_lib.output_lock(str(out)):  # what a running build holds
        with pytest.raises(build_lib.OutputLockedError) as e:
            build_lib.build_dataset(str(input_dir / "people"), str(out), **KW)
    line = errors.one_line(e.value)
    assert f"pid {os.getpid()}" in line and "being built by another data_prep run" in line
    assert not out.exists()


def test_a_killed_build_leaves_recognisable_leftovers(tmp_path, faces_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PHOTOS[:2]:
        shutil.copy(faces_dir / p, photos / p)
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.build", f"--input={photos}",
                             f"--output_dir={out}", "--resolution=64", "--variants_per_face=1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(f".ds.building-*/{features.BUILDING_MARKER}")):
            assert proc.poll() is None and time.time() < deadline, "the build ended before the kill"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftover = next(tmp_path.glob(".ds.building-*"))
    for read in (lambda d: features.list_shards(d, "train"), features.read_dataset_info):
        with pytest.raises(features.IncompleteDatasetError, match="did not finish"):
            read(str(leftover))
        with pytest.raises(features.IncompleteDatasetError, match="unfinished"):
            read(str(out))
    # The next build takes the (released) lock, removes the leftovers and finishes.
    info = build_lib.build_dataset(str(photos), str(out), resolution=64, variants_per_face=1,
                                   pipeline_args=IN_PROCESS)
    assert info["images"]["accepted"] == 2 and not leftover.exists()
    assert features.list_shards(str(out), "train")


def test_the_binary_reports_user_errors_in_one_line(tmp_path, faces_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for flags, words in ((["--resolution=100"], "--resolution: 100 is not a multiple of 32"),
                         (["--num_shards=-2"], "--num_shards: must be a positive"),
                         (["--input=/no/such/folder"], "does not exist")):
        cmd = [sys.executable, "-m", "data_prep.build", f"--input={faces_dir}",
               f"--output_dir={tmp_path / 'o'}"] + flags
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == errors.EXIT_USER_ERROR, r.stderr[-3000:]
        assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
        assert words in r.stderr, r.stderr[-500:]
        assert not (tmp_path / "o").exists()


def test_a_turned_head_beyond_the_limit_is_rejected_by_reason(tmp_path, faces_dir, shared_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(faces_dir / "100.jpg", photos / "frontal.jpg")                            # ~2 degrees
    shutil.copy(shared_dir / "data/lfw/Patrick_Stewart_0001.jpg", photos / "turned.jpg")  # ~40 degrees
    info = build_lib.build_dataset(str(photos), str(tmp_path / "ds"), resolution=64, variants_per_face=1,
                                   max_yaw=20, pipeline_args=IN_PROCESS)
    assert info["images"] == {"read": 2, "accepted": 1, "rejected": 1}
    row = (tmp_path / "ds" / "rejected.tsv").read_text().splitlines()[1].split("\t")
    assert row[0] == "turned.jpg" and row[2] == "implausible_landmarks" and "--max_yaw=20" in row[3]


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(errors.InputNotFoundError, match="no-such-dir"):
        build_lib.build_dataset(str(tmp_path / "no-such-dir"), str(tmp_path / "o"), **KW)


def test_default_pipeline_args():
    assert "--direct_running_mode=in_memory" in build_lib.default_pipeline_args([], 10)
    # In-process at any size: multi-processing lost records on a 31k-record build.
    assert build_lib.default_pipeline_args([], 8000) == ["--direct_running_mode=in_memory",
                                                         "--direct_num_workers=1"]
    assert build_lib.default_pipeline_args(["--runner=DataflowRunner"], 1000) == ["--runner=DataflowRunner"]
    assert build_lib.default_pipeline_args(["--direct_running_mode", "multi_threading"], 5) == [
        "--direct_running_mode", "multi_threading", "--direct_num_workers=0"]
    assert build_lib.default_pipeline_args(["--direct_num_workers=3"], 5) == ["--direct_num_workers=3"]


# --- paired input -----------------------------------------------------------------

def _draw_occluder(img: np.ndarray, box, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A filled ellipse and rectangle over the lower part of the face's box: drawn with
    cv2 shapes from the detector's box, not with data_prep's alignment or occluders."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    mask = np.zeros((h, w), np.uint8)
    c = (int(x0 + bw * rng.uniform(0.45, 0.55)), int(y0 + bh * rng.uniform(0.7, 0.8)))
    cv2.ellipse(mask, c, (int(bw * 0.3), int(bh * 0.15)), float(rng.uniform(-15, 15)), 0, 360, 255, -1)
    cv2.rectangle(mask, (int(x0 + bw * 0.2), int(y0 + bh * 0.75)), (int(x0 + bw * 0.5), int(y0 + bh * 0.9)),
                  255, -1)
    colour = rng.integers(0, 256, 3)
    out = img.copy()
    out[mask > 0] = colour
    return out, mask


def test_paired_input_maskedface_net_layout(tmp_path, faces_dir):
    clean_dir, occ_dir = tmp_path / "clean", tmp_path / "occluded"
    (occ_dir / "CMFD" / "00002").mkdir(parents=True)
    clean_dir.mkdir()
    rng = np.random.default_rng(0)
    drawn = {}
    names = {"00000": "0.jpg", "00001": "10.jpg", "00002": "100.jpg", "00003": "105.jpg"}
    with FaceAnalyzer() as fa:
        boxes = {stem: largest_face(fa.detect(_read(faces_dir / p))).bbox for stem, p in names.items()}
    for stem, photo in names.items():
        img = _read(faces_dir / photo)
        _write(clean_dir / f"{stem}.png", img)
        versions = ["_Mask"] + (["_Mask_Mouth_Chin"] if stem == "00001" else [])
        for suffix in versions:
            occluded, mask = _draw_occluder(img, boxes[stem], rng)
            sub = occ_dir / "CMFD" / "00002" if stem == "00002" else occ_dir
            path = sub / f"{stem}{suffix}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(occluded, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            drawn[str(path.relative_to(occ_dir))] = (img, mask)
    _write(occ_dir / "99999_Mask.jpg", _read(faces_dir / "11.jpg"))  # no clean original
    out = tmp_path / "ds"
    info = build_lib.build_dataset(str(occ_dir), str(out), resolution=64, clean_dir=str(clean_dir),
                                   variants_per_face=3, pipeline_args=IN_PROCESS)
    assert info["images"] == {"read": 6, "accepted": 5, "rejected": 1}
    assert info["rejected"]["unpaired"] == 1 and info["categories"] == {"paired": 5}
    assert info["occluder_kinds"] == {"paired": 5}
    assert info["paired"]["clean_photos_unmatched"] == 0
    records = _records(out, info)
    split_of = {}
    with FaceAnalyzer() as fa:
        for split, recs in records.items():
            for d in recs:
                split_of[d["source_id"]] = split
                assert d["category"] == pipeline.PAIRED and d["variant"] == 0
                m = d["mask"][..., 0] > 0
                np.testing.assert_array_equal(d["occluded"][~m], d["clean"][~m])
                # The drawn shape, aligned by the clean photo's landmarks, is the mask.
                img, shape = drawn[d["source_id"]]
                M = align.alignment_matrix(largest_face(fa.detect(img)).landmarks, 64)
                truth = align.warp_to_crop(shape, M, 64, cv2.BORDER_CONSTANT) > 127
                # All of it, and little more than the JPEG ringing a few pixels around it.
                near = cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
                assert truth.sum() > 50 and (m & truth).sum() > 0.95 * truth.sum(), d["source_id"]
                assert (m & ~near).sum() < 0.05 * m.sum(), d["source_id"]
                np.testing.assert_array_equal(d["clean"], align.padded_crop(img, M, 64).image)
    assert split_of["00001_Mask.jpg"] == split_of["00001_Mask_Mouth_Chin.jpg"]  # one clean photo


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
    info = build_lib.build_dataset("tfds:deocc_tiny_faces:train", str(tmp_path / "out"), resolution=64,
                                   variants_per_face=1, tfds_data_dir=str(data_dir))
    assert info["images"] == {"read": 3, "accepted": 3, "rejected": 0}
    ids = sorted(features.decode_example(r)["source_id"]
                 for s in info["splits"] for r in _read_split(tmp_path / "out", s))
    assert ids == [f"tfds/deocc_tiny_faces/train/{i:09d}" for i in range(3)]


def test_listing_reasons_are_reported(tmp_path):
    """Every listing reason has a counter slot in dataset_info.json."""
    assert set(sources.LISTING_REASONS) <= set(alignment.REJECT_REASONS)
    assert len(set(alignment.REJECT_REASONS)) == len(alignment.REJECT_REASONS)


def test_records_lost_between_synthesis_and_shards_fail_the_build():
    # Every produced record must be written; a runner that drops some fails loudly.
    pipeline.check_records({"train": 8, "test": 4}, {"train": 8, "test": 4})
    with pytest.raises(RuntimeError, match=r"records missing from the shards .*'train': 3"):
        pipeline.check_records({"train": 8, "test": 4}, {"train": 5, "test": 4})
    with pytest.raises(RuntimeError, match="'validation': 2"):
        pipeline.check_records({"train": 8, "validation": 2}, {"train": 8})


# ---------------------------------------------------------------- empty results, paired sizes, GIF


def test_prep_without_a_face_writes_nothing_and_train_refuses_an_empty_split(tmp_path, faces_dir):
    from deocc_jax.training import train_lib

    photos = tmp_path / "faceless"
    photos.mkdir()
    for i in range(2):
        cv2.imwrite(str(photos / f"wall{i}.png"), np.full((96, 96, 3), 60 + 90 * i, np.uint8))
    out = tmp_path / "ds"
    with pytest.raises(errors.UserError, match=r"no pair was made .*no_face 2"):
        build_lib.build_dataset(str(photos), str(out), resolution=32, pipeline_args=IN_PROCESS)
    assert not out.exists() and not list(tmp_path.glob(".ds.building*"))
    # A dataset whose train split is empty (made by hand: prep no longer writes one).
    data = pf.write_tiny_dataset(tmp_path / "empty_train", faces_dir,
                                 splits={"train": 0, "validation": 2})
    workdir = tmp_path / "run"
    with pytest.raises(errors.InvalidInputError, match="train split holds no record"):
        train_lib.train_and_evaluate(pf.tiny_config(data, num_train_steps=2), str(workdir))
    assert not workdir.exists()


def test_paired_sizes_must_match_and_an_animation_is_its_first_frame(tmp_path, faces_dir, caplog):
    clean_dir, occ_dir = tmp_path / "clean", tmp_path / "occluded"
    clean_dir.mkdir()
    occ_dir.mkdir()
    for stem, photo in (("a", "0.jpg"), ("b", "10.jpg")):
        img = cv2.cvtColor(cv2.imread(str(faces_dir / photo)), cv2.COLOR_BGR2RGB)
        if stem == "a":  # the clean original is an animated GIF: its first frame is the photo
            frames = [Image.fromarray(img), Image.fromarray(255 - img)]
            frames[0].save(clean_dir / "a.gif", save_all=True, append_images=frames[1:])
            with Image.open(clean_dir / "a.gif") as gif:
                img = np.asarray(gif.convert("RGB"))
        else:
            Image.fromarray(img).save(clean_dir / f"{stem}.png")
        with FaceAnalyzer() as fa:
            x0, y0, x1, y1 = (int(v) for v in largest_face(fa.detect(img)).bbox)
        occluded = img.copy()  # a box over the mouth
        occluded[y0 + (y1 - y0) * 7 // 10:y0 + (y1 - y0) * 9 // 10,
                 x0 + (x1 - x0) // 4:x1 - (x1 - x0) // 4] = (20, 120, 220)
        h, w = img.shape[:2]
        if stem == "b":  # a half-size copy: not pixel-aligned with its original
            occluded = cv2.resize(occluded, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        Image.fromarray(occluded).save(occ_dir / f"{stem}_Mask.png")
    with caplog.at_level(logging.WARNING):
        info = build_lib.build_dataset(str(occ_dir), str(tmp_path / "ds"), resolution=64,
                                       clean_dir=str(clean_dir), splits="train=1",
                                       pipeline_args=IN_PROCESS)
    assert info["images"] == {"read": 2, "accepted": 1, "rejected": 1}
    assert info["rejected"]["pair_mismatch"] == 1
    rejected = (tmp_path / "ds" / "rejected.tsv").read_text()
    assert "b_Mask.png" in rejected and "must be the same size" in rejected
    said = [r.getMessage() for r in caplog.records if "a.gif" in r.getMessage()]
    assert said and "2 frames" in said[0] and "first frame" in said[0]
