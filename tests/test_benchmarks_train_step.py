"""benchmarks/train_step.py times the project's real step, the same one the trainer runs.

The benchmark itself runs for minutes (and needs torch for the reference); these check that it
builds exactly `train_lib.build_setup`'s step from `deocc_jax.training.steps` + `models` + `sharding`
without TensorFlow, clu, MediaPipe, grain or orbax (the GPU image has none of them), and its
timing harness. The convolution layers it times are checked against flax references in
tests/test_models.py.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import train_step_lib
from deocc_jax.training import sharding, train_lib
from tests import pairs_fixture as pf


# What the GPU image lacks (and the step must not need).
_BLOCKED = ("tensorflow", "clu", "mediapipe", "grain", "orbax", "cv2", "torch")


def test_benchmark_step_is_the_trainers_step():
    config = train_step_lib.project_config("tiny", 32, 8)
    step, state, mesh = train_step_lib.project_step(config)
    setup = train_lib.build_setup(config, mesh)
    ref_state = setup.init()
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch = train_step_lib.uint8_batch(32, 8)
    new, metrics = step(state, sharding.put_batch(mesh, batch))
    ref_new, ref_metrics = setup.train_step(ref_state, sharding.put_batch(mesh, batch))
    assert set(metrics) == set(ref_metrics) and "d_loss" in metrics
    for k in metrics:
        np.testing.assert_allclose(np.asarray(metrics[k]), np.asarray(ref_metrics[k]), rtol=1e-6,
                                   err_msg=k)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref_new)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(new.step) == 1


def test_gpu_path_runs_without_tensorflow_clu_mediapipe(tmp_path):
    # The benchmark in a fresh process where _BLOCKED look uninstalled, as on the GPU image:
    # a None in sys.modules makes `import x` raise ModuleNotFoundError and find_spec return None.
    script = f"""
import json, sys
sys.modules.update(dict.fromkeys({_BLOCKED!r}))
from benchmarks import train_step_lib
rec = train_step_lib.run_benchmark("tiny", 32, 8, repeats=1, warmup=0, threads=1, with_torch=True)
rec["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in {_BLOCKED!r} and sys.modules[m])
print("RECORD " + json.dumps(rec))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=pf.subprocess_env(8),
                          cwd=str(pf.REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RECORD ")][-1]
    rec = json.loads(line[len("RECORD "):])
    assert rec["loaded"] == []
    assert "torch_images_per_s" not in rec  # the reference is pix2pix's; tiny is JAX only
    assert rec["devices"] == 8 and rec["conv_impl"] == "matmul"  # "auto" on CPU
    assert rec["jax_g_params"] > 0 and rec["jax_d_params"] > 0
    assert rec["flops_per_image"] > 1e6 and rec["jax_images_per_s"] > 0
    assert len(rec["jax_step_s_all"]) == 1
    assert rec["machine"]["jax_device_count"] == 8 and rec["code"]["git_head"]
    assert "tiny (matmul) 32px bs8" in train_step_lib.summary_line(rec)


def test_pix2pix_follows_the_reference_depth_and_overrides():
    c = train_step_lib.project_config("pix2pix", 128, 1)
    assert (c.model.generator.depth, c.model.generator.dropout_levels) == (7, 2)  # unet_128
    c = train_step_lib.project_config("pix2pix", 256, 4, conv_impl="xla_conv")
    assert (c.model.generator.depth, c.model.generator.dropout_levels, c.batch_size) == (8, 3, 4)
    assert c.model.conv_impl == "xla_conv"
    runlocal = train_step_lib.project_config("deocc:runlocal", 64, 2)
    assert runlocal.model.generator.self_attention_stride == 8


def test_time_alternating_and_summary():
    calls = []
    times = train_step_lib.time_alternating({"jax": lambda: calls.append("j"),
                                         "torch": lambda: calls.append("t")}, warmup=1, repeats=3)
    assert calls == ["j", "t"] * 4
    assert len(times["jax"]) == len(times["torch"]) == 3
    rec = {"config": "pix2pix", "conv_impl": "matmul", "resolution": 128, "batch_size": 1,
           "jax_images_per_s": 4.0, "compile_s": 9.0, "torch_images_per_s": 2.0, "ratio": 2.0,
           "flops_per_image": 2e11, "machine": {"cpu_model": "X", "threads": 2}}
    assert "ratio jax/torch 2.00" in train_step_lib.summary_line(rec)
    assert train_step_lib.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.7
    assert train_step_lib.peak_tflops("cpu", "float32") is None


@pytest.mark.parametrize("args,match", [
    (("pix2pix", 100, 1), "power of two"),
    (("pix2pix", 128, 0), "batch_size"),
    (("pix2pix", 32, 1), "PyTorch reference needs >= 64"),
])
def test_bad_arguments_are_rejected_before_building(args, match):
    with pytest.raises(ValueError, match=match):
        train_step_lib.run_benchmark(*args, repeats=1, warmup=0, threads=1, with_torch=True)
