"""Two processes (jax.distributed over gloo, 4 fake CPU devices each) train like one process with 8."""

import socket
import subprocess

import jax
import numpy as np
import pytest

from deocc_jax.training import sharding, train_lib
from tests import pairs_fixture as pf


STEPS = 4
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path_factory, faces_dir, tmp_path):
    data_dir = pf.tiny_dataset(tmp_path_factory, faces_dir)
    overrides = dict(num_train_steps=STEPS, checkpoint_every_steps=STEPS, eval_every_steps=STEPS,
                     log_every_steps=2)
    port = _free_port()
    multi = tmp_path / "multi"
    procs = []
    for pid in range(2):
        cmd = pf.train_command(multi, data_dir, **overrides) + [
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={pid}",
            # A loaded 2-core machine can hold one process minutes behind the other.
            f"--distributed_timeout_s={TIMEOUT_S}"]
        procs.append(subprocess.Popen(cmd, cwd=pf.REPO, env=pf.subprocess_env(num_devices=4),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = []
    try:
        for p in procs:
            errs.append(p.communicate(timeout=TIMEOUT_S + 60)[1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 0, f"process {pid} failed:\n{err[-4000:]}"
    assert "process 1 of 2, 4 local / 8 global devices" in errs[1]
    # Only process 0 writes shared files; each process saved its data-iterator position.
    assert (multi / "config.json").exists() and list((multi / "samples").glob("*.png"))
    data_files = sorted(f.name for f in (multi / "checkpoints" / str(STEPS) / "data").glob("*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]

    config = pf.tiny_config(data_dir, **overrides)
    single = tmp_path / "single"
    result = train_lib.train_and_evaluate(config, str(single))

    setup = train_lib.build_setup(config, sharding.make_mesh())
    a = jax.device_get(train_lib.state_items(pf.load_train_state(setup, str(single), STEPS)))
    b = jax.device_get(train_lib.state_items(pf.load_train_state(setup, str(multi), STEPS)))
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=4e-3)  # a few Adam steps of lr 1e-3
    # The validation metrics process 0 logged match the single-process ones.
    assert "eval step 4 | val_mask_iou" in errs[0]
    val_ssim = float(errs[0].split("val_ssim ")[1].split()[0])
    assert val_ssim == pytest.approx(result["eval"]["val_ssim"], abs=2e-3)
