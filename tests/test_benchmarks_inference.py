"""`python -m benchmarks.inference` end to end on two tiny random-initialised models.

The benchmark itself runs for many minutes on the shipped models and is not part of CI. Here the
whole command runs on 64 px models (configs/tiny.py, two widths) with a short clip, a few flicker
frames and a 32 px fresh generator for the runtime rows, and the test checks that every figure in
the JSON comes from a real run (positive rates, frames accounted for, percentiles of the recorded
times) and that every comparison is the ratio of the recorded values.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import inference_lib, inference_report, runtimes_lib
from deocc_jax import errors
from deocc_jax.artifacts import loading
from tests import pairs_fixture

CLIP_FRAMES, CLIP_FPS = 24, 30.0
FLICKER_FRAMES = 5


def _random_pretrained(directory, resolution: int, base_width: int) -> str:
    """configs/tiny.py at `resolution` and `base_width`, random weights, as a pretrained folder."""
    config, variables = pairs_fixture.random_tiny(resolution, base_width=base_width,
                                                  seed=base_width)
    loading.save_pretrained(str(directory), config, variables, 0, name=f"tiny-{base_width}",
                            dtype="float32")
    return str(directory)


def _close(a, b):
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_inference")
    ref = _random_pretrained(tmp / "ref", 64, 8)
    rt = _random_pretrained(tmp / "rt", 64, 4)
    out = tmp / "results" / "inference.json"
    cmd = [sys.executable, "-m", "benchmarks.inference", f"--models=ref={ref},rt={rt}",
           "--runtimes=jax,jax_xla_conv,savedmodel,onnx,tflite_dynamic_int8",
           "--runtime_models=ref,rt", "--init_config=tiny", "--init_resolutions=32", "--e2e=jax,onnx",
           "--latency_repeats=4", "--throughput_batch=2", "--throughput_repeats=2",
           "--clip_size=256x192", f"--clip_fps={CLIP_FPS}", f"--clip_frames={CLIP_FRAMES}",
           f"--flicker_frames={FLICKER_FRAMES}", "--flicker_size=192x144",
           f"--scratch_dir={tmp / 'scratch'}", f"--output={out}"]
    proc = subprocess.run(cmd, cwd=pairs_fixture.REPO, env=pairs_fixture.subprocess_env(1),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out) as f:
        rec = json.load(f)
    with open(out.with_suffix(".md")) as f:
        md = f.read()
    return rec, md, proc.stdout


def test_models_side_by_side_from_real_runs(result):
    rec, md, stdout = result
    assert list(rec["models"]) == ["ref", "rt"] and rec["baseline"] == "ref"
    assert rec["models"]["ref"]["generator_params"] > rec["models"]["rt"]["generator_params"] > 0
    for name, m in rec["models"].items():
        st = m["model_stage"]
        assert st["repeats"] == 4 and len(st["all_ms"]) == 4
        assert 0 < st["min_ms"] <= st["p50_ms"] <= st["p95_ms"]
        assert _close(st["p50_ms"], float(np.percentile(st["all_ms"], 50)))
        assert _close(st["p95_ms"], float(np.percentile(st["all_ms"], 95)))
        assert st["throughput"]["batch"] == 2 and st["throughput"]["faces_per_s"] > 0

        live = m["live"]
        assert live["mode"] == "file in real time" and live["source_fps"] == pytest.approx(CLIP_FPS)
        # Every frame of the clip entered; each came out or was dropped for a named reason.
        assert live["frames_in"] == CLIP_FRAMES and live["frames_accounted"]
        assert live["frames_in"] == live["frames_out"] + live["dropped"]
        assert sum(live["dropped_by"].values()) == live["dropped"]
        assert live["fps_out"] > 0 and live["faces"] >= 1 and live["stage_ms"]["model"] > 0
        assert 0 < live["latency_ms_p50"] <= live["latency_ms_p95"] <= live["latency_ms_max"]
        assert 0 < live["client"]["frames"] <= live["frames_out"] and live["client"]["fps"] > 0
        assert live["clip"]["size"] == [256, 192] and live["clip"]["frames"] == CLIP_FRAMES
        cap = m["live_capacity"]  # unpaced: lossless, every frame processed
        assert cap["mode"] == "file" and cap["frames_out"] == CLIP_FRAMES and cap["dropped"] == 0
        assert cap["fps_out"] > 0
        for rt in ("jax", "onnx"):  # `infer` with the model as loaded and with its ONNX export
            vid = m["infer_video"][rt]
            assert vid["frames"] == CLIP_FRAMES and vid["fps_processed"] > 0
        assert m["infer_video"]["onnx"]["model"].startswith("ONNX ")
        for section in (st, live, cap, vid, m["flicker"]):
            assert set(section["load_1m"]) == {"before", "after"} and section["section_wall_s"] > 0

        fl = m["flicker"]
        assert set(fl["variants"]) == {"per_frame", "landmark_smoothing", "stabilized"}
        assert len(fl["clips"]) == 6 and all(c["frames"] == FLICKER_FRAMES for c in fl["clips"])
        for v in fl["variants"].values():
            assert v["flicker"] > 0 and np.isfinite(v["masked_psnr"]) and v["ms_per_frame"] > 0
    assert "| ref | rt | target |" in md and "MJPEG client" in md and "## Runtimes" in md
    assert "inference: ref: model" in stdout


def test_comparisons_are_ratios_of_the_recorded_values(result):
    rec, _, _ = result
    ref, rt = rec["models"]["ref"], rec["models"]["rt"]
    c = rec["comparisons"]["models_vs_baseline"]["rt"]
    for key, path in inference_report.MODEL_FIGURES.items():
        a, b = inference_report._get(rt, *path), inference_report._get(ref, *path)
        assert c[key]["value"] == a and c[key]["baseline"] == b
        if b == 0:  # e.g. no frame dropped by the baseline
            assert c[key]["ratio"] is None, key
        else:
            assert _close(c[key]["ratio"], a / b), key
    psnr = c["masked_psnr_stabilized"]
    assert _close(psnr["diff_db"], rt["flicker"]["variants"]["stabilized"]["masked_psnr"]
                  - ref["flicker"]["variants"]["stabilized"]["masked_psnr"])
    for name, m in rec["models"].items():
        v = m["flicker"]["variants"]
        s = rec["comparisons"]["stabilized_vs_per_frame"][name]["stabilized"]
        assert _close(s["flicker"]["ratio"], v["stabilized"]["flicker"] / v["per_frame"]["flicker"])
        assert _close(s["flicker_reduction"], 1 - s["flicker"]["ratio"])
        # The same figures as the flicker module's own comparison.
        own = m["flicker"]["vs_per_frame"]["stabilized"]
        assert _close(s["flicker_reduction"], own["flicker_reduction"])
        assert _close(s["masked_psnr_cost_db"],
                      v["per_frame"]["masked_psnr"] - v["stabilized"]["masked_psnr"])
        t = rec["targets"][name]
        assert t["model_stage_p50_ms"]["value"] == m["model_stage"]["p50_ms"]
        assert t["model_stage_p50_ms"]["met"] == (m["model_stage"]["p50_ms"] <= 15.0)
        assert t["live_fps"]["met"] == (m["live"]["fps_out"] >= 25.0)
        assert t["mjpeg_client_fps"]["value"] == m["live"]["client"]["fps"]
        assert t["flicker_reduction"]["value"] == s["flicker_reduction"]
    assert rec["machine"]["cpu_cores_available"] >= 1 and "jax_version" in rec["machine"]
    assert set(rec["load_average_1m"]) == {"start", "end"} and rec["code"]["git_head"]


def test_runtime_rows_per_model_and_fresh_generator(result):
    rec, _, _ = result
    assert [r["key"] for r in rec["runtimes"]] == ["ref@64", "rt@64", "init:tiny@32"]
    for row in rec["runtimes"]:
        assert row["inputs"] == "2 given crop(s)"  # the embedded portraits, aligned
        for rt in ("jax", "jax_xla_conv", "savedmodel", "onnx", "tflite_dynamic_int8"):
            x = row[rt]
            assert x["repeats"] == 4 and 0 < x["min_ms"] <= x["median_ms"] <= x["p95_ms"]
            assert _close(x["p95_ms"], float(np.percentile(x["all_ms"], 95)))
            tp = x["throughput"]
            assert tp["batch"] == 2 and _close(tp["images_per_s"], 2e3 / tp["median_ms"])
            if rt != "jax":
                vs = rec["comparisons"]["runtimes_vs_jax"][row["key"]][rt]
                assert _close(vs["latency_median_ms"]["ratio"],
                              x["median_ms"] / row["jax"]["median_ms"])
                assert _close(vs["throughput_images_per_s"]["ratio"],
                              tp["images_per_s"] / row["jax"]["throughput"]["images_per_s"])
        for rt in ("jax_xla_conv", "savedmodel", "onnx"):  # float32: the same model
            assert row[rt]["max_abs_diff_vs_jax"] <= 1, (row["key"], rt)
        for rt in ("savedmodel", "onnx", "tflite_dynamic_int8"):
            assert row[rt]["file_mb"] > 0 and row[rt]["convert_s"] > 0
            assert os.path.exists(row[rt]["path"])
        assert row["tflite_dynamic_int8"]["mean_abs_diff_vs_jax"] < 8  # the exporter's own bound
    assert rec["runtimes"][0]["weights"].startswith("trained: ")


def test_argument_errors_are_one_line(tmp_path):
    assert inference_lib.parse_models(["a=/x", "b = /y"]) == {"a": "/x", "b": "/y"}
    for bad, match in [(["/x"], "NAME=PATH"), (["a=/x", "a=/y"], "twice"), ([], "no model")]:
        with pytest.raises(errors.InvalidInputError, match=match):
            inference_lib.parse_models(bad)
    assert inference_lib.parse_size("640x480", "clip_size") == (640, 480)
    with pytest.raises(errors.InvalidInputError, match="WIDTHxHEIGHT"):
        inference_lib.parse_size("640", "clip_size")
    base = {"runtimes": ["jax", "onnx"], "e2e": ["jax"]}
    inference_lib.check_args(base)
    with pytest.raises(ValueError, match="unknown runtime"):
        inference_lib.check_args({**base, "runtimes": ["jax", "coreml"]})
    with pytest.raises(ValueError, match="not in --runtimes"):
        inference_lib.check_args({**base, "e2e": ["tflite_none"]})
    with pytest.raises(ValueError, match="not a model file"):
        inference_lib.check_args({"runtimes": ["jax", "jax_xla_conv"], "e2e": ["jax_xla_conv"]})
    args = {**base, "scratch_dir": str(tmp_path)}
    with pytest.raises(errors.InputNotFoundError, match="no such model folder"):
        inference_lib.run_benchmark({"a": str(tmp_path / "nope")}, args)
    with pytest.raises(errors.InvalidInputError, match="--baseline=b: not one of"):
        inference_lib.run_benchmark({"a": str(tmp_path)}, {**args, "baseline": "b"})
    with pytest.raises(errors.InvalidInputError, match="--runtime_models"):
        inference_lib.run_benchmark({"a": str(tmp_path)}, {**args, "runtime_models": ["z"]})
    with pytest.raises(ValueError, match="unknown variant"):
        runtimes_lib.benchmark_resolution("tiny", 32, ("coreml",))


def test_ratio_is_undefined_without_a_baseline():
    assert inference_report.ratio(3.0, 2.0) == {"value": 3.0, "baseline": 2.0, "ratio": 1.5}
    assert inference_report.ratio(3.0, 0.0)["ratio"] is None
    assert inference_report.ratio(None, 2.0)["ratio"] is None
    assert inference_report.ratio(float("nan"), 2.0)["ratio"] is None
