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
