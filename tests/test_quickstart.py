"""The quickstart runs end to end on ../shared data with the CI budget.

The run itself is the session fixture `quickstart_run` (conftest.py), whose
outputs test_evaluate, test_export and test_infer reuse.
"""

import json
import os

import cv2
import numpy as np
import pytest


@pytest.mark.slow
def test_quickstart_end_to_end(quickstart_run):
    out = quickstart_run["outputs"]
    for key, path in out.items():
        if key != "tensorboard":
            assert os.path.exists(path), f"{key}: {path} missing"
    # A dataset with a test split, a trained checkpoint, metrics with baselines.
    assert quickstart_run["dataset_counts"]["train"] > 0 and quickstart_run["dataset_counts"]["test"] > 0
    with open(out["metrics"]) as f:
        metrics = json.load(f)
    assert {"model", "occluded_input", "opencv_telea", "opencv_ns"} <= set(metrics["methods"])
    assert os.path.isfile(os.path.join(out["export"], "saved_model.pb"))
    # The demo photo had a face; the restored photo differs from the occluded one.
    assert quickstart_run["demo_faces"] == 1
    before = cv2.imread(out["demo_input"])
    after = cv2.imread(out["demo_output"])
    assert before.shape == after.shape
    assert np.any(before != after)
    with open(out["summary"]) as f:
        assert json.load(f)["budget"] == "ci"
    text = "\n".join(quickstart_run["log"])
    # Honest about what a handful of photos gives, and says how to train a real model.
    assert "demonstration" in text and "configs/realtime.py" in text
    for key in ("metrics", "export", "demo_output"):
        assert out[key] in text


def test_embedded_default_dataset_has_every_split(tmp_path):
    """README's first command: the embedded portraits' copies fill train, validation and test.

    Near-duplicate grouping would make the copies of each portrait one group: two groups for
    three splits, and the quickstart stopped at evaluation with an empty test split.
    """
    from deocc_jax.faces import sample_photos
    from launch import quickstart
    photos = quickstart.augmented_copies(sample_photos.face_photo_paths(), str(tmp_path / "photos"))
    b = quickstart.BUDGETS["default"]
    info = quickstart.prepare_dataset(str(tmp_path / "photos"), str(tmp_path / "data"),
                                      resolution=b.resolution, variants_per_face=1, seed=0,
                                      occluders_dir=None, near_duplicates=quickstart.EMBEDDED_NEAR_DUPLICATES)
    counts = {k: v["num_records"] for k, v in info["splits"].items()}
    assert sum(counts.values()) == len(photos)
    assert all(counts[s] > 0 for s in ("train", "validation", "test")), counts
