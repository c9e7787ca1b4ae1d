"""The application benchmarks' logic: input-pipeline timing on real data, the inference
runtimes, and quality at equal compute (variant specs, the CPU budget, the table).

The benchmarks themselves run for minutes and are not part of CI; these check that what they
measure and report is computed from the real pipeline, the real configs (parsed by the trainer's
own config parser) and the real trainer's stopping protocol.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from benchmarks import common, inference_lib, input_pipeline_lib, quality_lib, quality_variants
from tests import pairs_fixture


def test_input_pipeline_benchmark_times_the_real_pipeline(tmp_path_factory, faces_dir):
    data = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir)  # 32 px, 16 train examples
    rec = input_pipeline_lib.run_benchmark(str(data), 32, 4, [1, 2], batches=3, warmup=1,
                                           stage_examples=4, configs=[], step_repeats=1)
    assert [p["threads"] for p in rec["pipeline"]] == [1, 2]
    for p in rec["pipeline"]:
        assert p["images"] == 12
        assert p["images_per_s"] > 0 and p["images_per_cpu_s"] > 0
    st = rec["stages_one_thread"]
    assert st["examples"] == 4 and st["decode_ms"] > 0 and st["augment_ms"] > 0
    assert st["total_ms"] == pytest.approx(st["read_ms"] + st["decode_ms"] + st["augment_ms"])
    assert rec["dataset"]["records_per_split"]["train"] == 16
    assert rec["pipeline_images_per_cpu_s"] == max(p["images_per_cpu_s"] for p in rec["pipeline"])
    json.dumps(rec)
    assert "2 thread(s)" in input_pipeline_lib.summary_line(rec)


def test_input_pipeline_benchmark_refuses_a_resolution_the_data_lacks(tmp_path_factory, faces_dir):
    data = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir)
    with pytest.raises(ValueError, match="prepared at 32 px"):
        input_pipeline_lib.run_benchmark(str(data), 64, 4, [1], batches=1, warmup=0,
                                         stage_examples=1, configs=[], step_repeats=1)


def test_inference_times_any_predictor_and_checks_runtimes():
    class Fake:  # the predictors.Predictor protocol
        resolution, guided, description = 32, True, "fake"

        def __init__(self):
            self.calls = []

        def __call__(self, images, masks=None):
            self.calls.append((images.shape, None if masks is None else masks.shape))
            return {"deoccluded": images, "mask": np.ones(images.shape[:3] + (1,), np.float32)}

    fake = Fake()
    t = inference_lib.time_predictor(fake, latency_repeats=3, tp_batch=4, tp_repeats=2)
    # first call + one settling call + the timed ones, masks given to a guided model
    assert fake.calls == [((1, 32, 32, 3), (1, 32, 32, 1))] * 5 + [((4, 32, 32, 3), (4, 32, 32, 1))] * 4
    assert len(t["latency"]["all_s"]) == 3 and t["throughput"]["batch"] == 4
    assert t["throughput"]["images_per_s"] == pytest.approx(4 / t["throughput"]["median_s"])
    base = {"runtimes": ["jax"], "e2e": []}
    inference_lib.check_args(base)
    with pytest.raises(ValueError, match="unknown runtime"):
        inference_lib.check_args({**base, "runtimes": ["jax", "onnx_typo"]})
    with pytest.raises(ValueError, match="not in --runtimes"):
        inference_lib.check_args({**base, "e2e": ["savedmodel"]})


# ---------------------------------------------------------------------------- quality


_FAKE = {
    "unet_l1": {"psnr": 27.1, "ssim": 0.91, "mse": 0.002, "masked_psnr": 19.5, "masked_ssim": 0.61,
                "masked_mse": 0.011, "mask_iou": None},
    "deocc": {"psnr": 28.0, "ssim": 0.93, "mse": 0.0016, "masked_psnr": 21.25, "masked_ssim": 0.70,
              "masked_mse": 0.0075, "mask_iou": 0.6},
    "opencv_telea": {"psnr": 22.0, "ssim": 0.85, "mse": 0.006, "masked_psnr": 14.0,
                     "masked_ssim": 0.35, "masked_mse": 0.04, "mask_iou": None},
}


def test_quality_table_rows_and_values():
    runs = {"unet_l1": {"steps": 120, "cpu_s": 240.4, "wall_s": 401.2},
            "deocc": {"steps": 80, "cpu_s": 239.6, "wall_s": 250.0}}
    table = quality_lib.quality_table(_FAKE, runs, ["unet_l1", "deocc", "opencv_telea"])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | steps | CPU s | wall s | PSNR (dB) | SSIM |")
    assert len(lines) == 5
    assert lines[2] == ("| unet_l1 | 120 | 240 | 401 | 27.10 | 0.9100 | 0.00200 | 19.50 | 0.6100 "
                        "| 0.01100 | – |")
    assert lines[3].endswith("| 21.25 | 0.7000 | 0.00750 | 0.6000 |")
    assert lines[4].startswith("| opencv_telea | – | – | – | 22.00 |")
    assert quality_lib.best_by(_FAKE, "masked_psnr") == "deocc"
    assert quality_lib.best_by(_FAKE, "masked_mse", higher=False) == "deocc"


def test_variant_specs():
    vs = quality_variants.collect_variants(
        ["unet_l1", "configs/deocc.py:runlocal"],
        ["noattn=configs/deocc.py,model.generator.self_attention_stride=0,"
         "model.generator.attention_gates=False", "guided=deocc,model.mode=guided"])
    assert [(v.name, v.config) for v in vs] == [
        ("unet_l1", "configs/unet_l1.py"), ("deocc-runlocal", "configs/deocc.py:runlocal"),
        ("noattn", "configs/deocc.py"), ("guided", "configs/deocc.py")]
    assert vs[2].overrides == (("model.generator.self_attention_stride", "0"),
                               ("model.generator.attention_gates", "False"))
    for bad, match in [("configs/deocc.py", "NAME=PATH"), ("a b=configs/deocc.py", "NAME=PATH"),
                       ("x=configs/deocc.py,model.mode", "not KEY=VALUE")]:
        with pytest.raises(ValueError, match=match):
            quality_variants.parse_variant(bad)
    with pytest.raises(ValueError, match="unique"):
        quality_variants.collect_variants(["deocc"], ["deocc=configs/deocc.py,seed=1"])
    with pytest.raises(ValueError, match="nothing to train"):
        quality_variants.collect_variants([""], [])


@pytest.mark.parametrize("schedules", ["budget", "config"])
def test_trainer_config_as_the_trainer_parses_it(schedules):
    v = quality_variants.parse_variant(
        "noattn=configs/deocc.py,model.generator.self_attention_stride=0,"
        "model.generator.attention_gates=False,optim.g.learning_rate=1e-3")
    kw = dict(resolution=128, batch_size=8, max_steps=1000, schedules=schedules, seed=3)
    cmd = quality_variants.trainer_command(v, "/tmp/w", "/tmp/d", **kw)
    assert cmd[1:4] == ["-m", "deocc_jax.train", "--config=configs/deocc.py"]
    assert cmd[4] == "--workdir=/tmp/w"
    assert cmd[5:] == quality_variants.config_overrides(v, "/tmp/d", **kw)
    c = quality_variants.resolve_config(v.config, cmd[5:])
    assert (c.resolution, c.batch_size, c.num_train_steps, c.seed, c.data_dir) == (128, 8, 1000, 3, "/tmp/d")
    assert c.model.generator.self_attention_stride == 0 and c.model.generator.attention_gates is False
    assert c.optim.g.learning_rate == 1e-3  # the variant's own override comes last and wins
    assert c.eval_every_steps == 0 and c.log_every_steps == 1 and c.eval_face_metrics is False
    default = quality_variants.resolve_config("configs/deocc.py", [])
    if schedules == "budget":
        assert c.optim.g.schedule == c.optim.d.schedule == "constant"
        assert c.optim.g.warmup_steps == 0 and c.optim.ema_decay == 0.0
    else:
        assert c.optim.g.schedule == default.optim.g.schedule
        assert c.optim.ema_decay == default.optim.ema_decay


@pytest.mark.parametrize("config,overrides,match", [
    ("configs/deocc.py", ["--config.model.generator.no_such_key=1"], "no key"),
    ("configs/deocc.py", ["--config.model.generator.attention_gates=maybe"], "boolean"),
    ("configs/nope.py", [], "no such config file"),
    ("configs/deocc.py:nope", [], "unknown config variant"),
])
def test_bad_config_specs_fail_before_training(config, overrides, match):
    with pytest.raises(ValueError, match=match):
        quality_variants.resolve_config(config, overrides)


def test_process_tree_cpu_counts_threads_and_children():
    # A child that burns CPU in two threads of its own and in a grandchild.
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\n"
    code = textwrap.dedent(f"""
        import subprocess, sys, threading, time
        g = subprocess.Popen([sys.executable, "-c", {burn!r} + "time.sleep(30)"])
        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.6: pass
        ts = [threading.Thread(target=spin) for _ in range(2)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("ready", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the grandchild's burn may still be running
        deadline = time.monotonic() + 20
        while quality_lib.process_tree_cpu_s(proc.pid) < 1.6 and time.monotonic() < deadline:
            time.sleep(0.2)
        cpu = quality_lib.process_tree_cpu_s(proc.pid)
        # 0.6 s in each thread + 0.6 s in the grandchild, + interpreter start-ups
        assert 1.6 <= cpu < 10, cpu
    finally:
        for p in _descendants(proc.pid):
            os.kill(p, 9)
        proc.kill()
        proc.wait()
    assert quality_lib.process_tree_cpu_s(proc.pid) == 0.0  # gone


def _descendants(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                for c in map(int, f.read().split()):
                    out += [c] + _descendants(c)
    except FileNotFoundError:
        pass
    return out


# A stand-in for `deocc_jax.train`: logs a step every ~0.05 CPU-s the way train_lib does, and on
# SIGTERM finishes the step, "saves" and exits 143 (the loop's preemption path).
_FAKE_TRAINER = """
import signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
time.sleep({startup})  # start-up / compilation: not charged
for step in range(1, 100000):
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    print(f"I1125 00:00:00.000 1 train_lib.py:1] step {{step}}/100000 | g_loss 1.0", flush=True)
    if stop:
        print("saved", flush=True)
        sys.exit(143)
    {fail}
"""


def _fake_run(tmp_path, name, budget, budget_s, startup=0.3, fail=""):
    cmd = [sys.executable, "-c", _FAKE_TRAINER.format(startup=startup, fail=fail)]
    return quality_lib.TrainerRun(quality_variants.Variant(name, "configs/tiny.py"), cmd,
                                  str(tmp_path / name), budget=budget, budget_s=budget_s,
                                  startup_timeout_s=30, log=lambda s: None)


def test_trainer_runs_stop_at_their_cpu_budget_side_by_side(tmp_path):
    runs = [_fake_run(tmp_path, "a", "cpu", 0.6), _fake_run(tmp_path, "b", "cpu", 0.6, startup=1.0)]
    quality_lib.train_all(runs, parallel=2, poll_s=0.05)
    for r in runs:
        rec = r.record
        assert rec["exit_code"] == 143 and rec["stopped_by_budget"]
        # steps 2..N cost 0.05 CPU-s each; the budget stops it within a step or two of 0.6 s
        assert 0.6 <= rec["cpu_s"] < 1.2, rec
        assert rec["steps"] - 1 == pytest.approx(rec["cpu_s"] / 0.05, abs=3)
        assert rec["wall_s"] >= rec["cpu_s"] * 0.9
        with open(rec["log"]) as f:
            assert f.read().rstrip().endswith("saved")
    assert runs[1].record["startup_wall_s"] >= 1.0  # start-up is not charged to the budget


def test_trainer_run_wall_budget_and_failures(tmp_path):
    run = _fake_run(tmp_path, "w", "wall", 0.4)
    quality_lib.train_all([run], parallel=1, poll_s=0.05)
    assert 0.4 <= run.record["wall_s"] < 2.0 and run.record["budget"] == "wall"
    bad = _fake_run(tmp_path, "bad", "cpu", 100, fail="sys.exit(3) if step == 3 else None")
    other = _fake_run(tmp_path, "other", "cpu", 100)
    with pytest.raises(RuntimeError, match="bad: trainer exited with code 3"):
        quality_lib.train_all([bad, other], parallel=2, poll_s=0.05)
    assert other._proc.poll() is not None  # the other trainer was ended, not left running
    with pytest.raises(ValueError, match="parallel"):
        quality_lib.train_all([], parallel=0)


@pytest.mark.slow
def test_quality_end_to_end_with_the_real_trainer(tmp_path_factory, faces_dir, tmp_path):
    # One variant with an override, the real `deocc_jax.train` stopped by a 1 CPU-s budget, then
    # eval_lib.evaluate on the test split with the baselines.
    data = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir, splits={"train": 16, "test": 4})
    variant = quality_variants.parse_variant("guided=configs/tiny.py,model.mode=guided")
    logs = []
    # The trainer child inherits os.environ: one device (a cheaper compile than this process's
    # 8 fake ones) and the tests' compilation cache.
    env = pairs_fixture.subprocess_env(1)
    old = dict(os.environ)
    os.environ.update({k: env[k] for k in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "PYTHONPATH")})
    try:
        rec = quality_lib.run_benchmark([variant], budget="cpu", budget_s=1.0, data_dir=str(data),
                                        work_dir=str(tmp_path), resolution=32, batch_size=8,
                                        max_steps=10_000, schedules="budget", seed=0,
                                        startup_timeout_s=600, eval_batch_size=8, log=logs.append)
    finally:
        os.environ.clear()
        os.environ.update(old)
    run = rec["variants"]["guided"]["run"]
    assert run["exit_code"] == 143 and run["stopped_by_budget"] and run["steps"] >= 2
    assert run["cpu_s"] >= 1.0 and run["wall_s"] > 0 and run["startup_cpu_s"] > 0
    assert rec["variants"]["guided"]["model"]["mode"] == "guided"
    assert rec["variants"]["guided"]["overrides"] == ["model.mode=guided"]
    assert rec["num_test_examples"] == 4
    assert rec["order"] == ["guided", "occluded_input", "opencv_telea", "opencv_ns"]
    m = rec["metrics"]["guided"]
    assert m["count"] == 4 and np.isfinite(m["masked_psnr"]) and m.get("mask_iou") is None
    assert rec["baselines"]["occluded_input"]["masked_psnr"] < rec["baselines"]["opencv_telea"]["masked_psnr"]
    assert "| guided | " in quality_lib.markdown_report(rec)
    json.dumps(rec)


def test_prepare_dataset_never_replaces_a_data_set_it_did_not_build(tmp_path):
    # A user's --data_dir (here a different resolution and size) is used, not rebuilt: once a
    # benchmark rebuilt a 31k-record set in place under a training run.
    data = tmp_path / "mine"
    data.mkdir()
    info = {"resolution": 128, "variants_per_face": 4, "seed": 0, "images": {"read": 8000},
            "splits": {}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    lines = []
    got = common.prepare_dataset(str(data), max_photos=12, resolution=64, log=lines.append)
    assert got["images"]["read"] == 8000 and "never replaces" in lines[0]
    assert sorted(p.name for p in data.iterdir()) == ["dataset_info.json"]


def test_error_sources_swaps_in_the_true_mask(quickstart_run, tmp_path_factory, faces_dir):
    """The shipped-model and Telea rows are evaluate's own numbers; the true-mask fill is its own
    method; a model without a mask head or at another resolution is refused in one line."""
    from benchmarks import error_sources
    from deocc_jax import errors
    with open(quickstart_run["outputs"]["metrics"]) as f:
        evaluated = json.load(f)
    workdir, data = quickstart_run["outputs"]["workdir"], quickstart_run["outputs"]["dataset"]
    got = error_sources.run(workdir, data, "test", None, 8, log=None)
    assert list(got["methods"]) == ["model", error_sources.MODEL_FILL,
                                    error_sources.TELEA_MODEL_MASK, "opencv_telea", "opencv_ns"]
    assert got["categories"] == evaluated["categories"]
    for name in ("model", "opencv_telea"):
        for key in ("masked_psnr", "psnr", "masked_ssim"):
            assert got["methods"][name]["overall"][key] == pytest.approx(
                evaluated["methods"][name]["overall"][key], rel=1e-4), (name, key)
    fill = got["methods"][error_sources.MODEL_FILL]["overall"]
    assert fill["masked_psnr"] != got["methods"]["model"]["overall"]["masked_psnr"]
    table = error_sources.markdown(got)
    assert all(f"| {c} ({n}) |" in table for c, n in got["categories"].items())
    other = pairs_fixture.tiny_dataset(tmp_path_factory, faces_dir, resolution=64)
    with pytest.raises(errors.InvalidInputError, match="works at 32 px but the dataset is 64 px"):
        error_sources.run(workdir, str(other), "train", None, 8)


def test_realism_ablation_rows_recipes_and_category_losses(tmp_path):
    from benchmarks import realism_ablation_lib as ral

    def cfg(path, **loss):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"loss": {"l1_weight": 10.0, "adv_weight": 1.0, **loss},
                       "workdir": path, "data": {"clean_prob": 0.0}}, f)
        return path

    def method(psnr, ssim, identity):
        overall = {"masked_psnr": psnr, "masked_ssim": ssim, "identity_distance": identity,
                   "detail_ratio": 0.5}
        return {"overall": overall,
                "per_category": {"hand": dict(overall), "cup": {**overall, "masked_ssim": 0.1}}}

    metrics = {"split": "test", "num_examples": 4, "data_dir": "d", "categories": ["cup", "hand"],
               "checkpoints": {"model": {"path": cfg(str(tmp_path / "a"))},
                               "compare:b": {"path": cfg(str(tmp_path / "b"), l1_weight=2.0)}},
               "methods": {"model": method(20.0, 0.6, 0.40), "compare:b": method(19.0, 0.5, 0.35),
                           "occluded_input": method(13.0, 0.3, 0.36),
                           "opencv_telea": method(17.0, 0.4, 0.41),
                           "opencv_ns": method(17.5, 0.45, 0.42)}}
    table = ral.build(metrics)
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["model", "compare:b", "occluded_input", "opencv_telea", "opencv_ns"]
    assert rows["compare:b"]["recipe_vs_first_arm"] == {"loss.l1_weight": 2.0}
    assert rows["model"]["recipe_vs_first_arm"] == {}
    assert abs(rows["compare:b"]["identity_vs_nothing"] - (-0.01)) < 1e-9
    assert rows["model"]["loses_to_inpainting_in"] == ["cup (ssim)"]
    md = ral.markdown(table)
    assert "no: cup (ssim)" in md and "`loss.l1_weight=2.0`" in md
