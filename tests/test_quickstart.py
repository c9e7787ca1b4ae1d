"""The quickstart runs end to end on ../shared data with the CI budget.

Its outputs (dataset, tiny trained workdir, eval, export, inference) are
shared with test_evaluate, test_export and test_infer through `shared_run`,
so the whole application suite trains one model once per session.
"""

import json
import os

import cv2
import numpy as np
import pytest

_CACHE: dict = {}


def shared_run(tmp_path_factory, faces_dir, occluders_dir) -> dict:
    """Runs `launch.quickstart` (budget "ci") once per pytest session; returns its summary.

    The summary gets an extra "log" entry: every line the quickstart printed.
    """
    if "run" not in _CACHE:
        from launch import quickstart
        out = tmp_path_factory.mktemp("quickstart")
        lines: list[str] = []
        summary = quickstart.run(str(out), input_spec=str(faces_dir),
                                 occluders_dir=str(occluders_dir), budget="ci", log=lines.append)
        summary["log"] = lines
        summary["output_dir"] = str(out)
        _CACHE["run"] = summary
    return _CACHE["run"]


@pytest.fixture(scope="module")
def qs(tmp_path_factory, faces_dir, occluders_dir):
    return shared_run(tmp_path_factory, faces_dir, occluders_dir)


@pytest.mark.slow
def test_quickstart_end_to_end(qs):
    out = qs["outputs"]
    for key, path in out.items():
        if key != "tensorboard":
            assert os.path.exists(path), f"{key}: {path} missing"
    # A dataset with a test split, a trained checkpoint, metrics with baselines.
    assert qs["dataset_counts"]["train"] > 0 and qs["dataset_counts"]["test"] > 0
    with open(out["metrics"]) as f:
        metrics = json.load(f)
    assert {"model", "occluded_input", "opencv_telea", "opencv_ns"} <= set(metrics["methods"])
    assert os.path.isfile(os.path.join(out["export"], "saved_model.pb"))
    # The demo photo had a face; the restored photo differs from the occluded one.
    assert qs["demo_faces"] == 1
    before = cv2.imread(out["demo_input"])
    after = cv2.imread(out["demo_output"])
    assert before.shape == after.shape
    assert np.any(before != after)
    with open(out["summary"]) as f:
        assert json.load(f)["budget"] == "ci"
    text = "\n".join(qs["log"])
    # Honest about what a handful of photos gives, and says how to train a real model.
    assert "demonstration" in text and "configs/deocc.py" in text
    for key in ("metrics", "export", "demo_output"):
        assert out[key] in text
