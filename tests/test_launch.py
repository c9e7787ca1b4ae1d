"""Launch scripts: dry runs print the commands the Cloud TPU / JAX multi-host docs prescribe."""

import shlex
import subprocess
import sys

import pytest

from launch import gpu_cluster_lib, tpu_pod_lib
from tests import pairs_fixture as pf

TPU = dict(name="t1", zone="us-central2-b", project="proj", accelerator_type="v4-32",
           version="tpu-ubuntu2204-base", config="configs/deocc.py", overrides=["batch_size=256"],
           data_gcs="gs://bkt/pairs", workdir="gs://bkt/runs/a")


def test_tpu_lifecycle_commands():
    create, = tpu_pod_lib.build_commands("create", spot=True, **TPU)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t1", "--zone=us-central2-b",
                      "--project=proj", "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base", "--spot"]
    archive, scp, install = tpu_pod_lib.build_commands("setup", **TPU)
    assert archive[:2] == ["git", "archive"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert "--worker=all" in install and "jax[tpu]==0.10.2" in install[-1]
    train, = tpu_pod_lib.build_commands("train", **TPU)
    assert train[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in train
    remote = train[-1][len("--command="):]
    argv = shlex.split(remote.split("nohup ")[1].split(" >")[0])
    assert argv == ["python3", "-m", "deocc_jax.train", "--config=configs/deocc.py",
                    f"--config.data_dir={tpu_pod_lib.LOCAL_DATA}", "--workdir=gs://bkt/runs/a",
                    "--distributed", "--config.batch_size=256"]
    stop, = tpu_pod_lib.build_commands("stop", **TPU)
    assert "kill -TERM" in stop[-1] and "--worker=all" in stop
    delete, = tpu_pod_lib.build_commands("delete", **TPU)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1", "--zone=us-central2-b",
                      "--project=proj", "--quiet"]
    assert len(tpu_pod_lib.build_commands("all", **TPU)) == 7
    with pytest.raises(ValueError, match="data_gcs"):
        tpu_pod_lib.build_commands("data", **{**TPU, "data_gcs": None})


def test_tpu_dry_run_binary_prints_without_running():
    out = subprocess.run([sys.executable, "-m", "launch.tpu_pod", "--dry_run", "--name=x",
                          "--zone=europe-west4-b", "--workdir=gs://b/w", "train"],
                         cwd=pf.REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line, = out.stdout.strip().splitlines()
    assert line.startswith("gcloud compute tpus tpu-vm ssh x --zone=europe-west4-b --worker=all")


def test_gpu_cluster_ssh_commands():
    cmds = gpu_cluster_lib.ssh_commands(["h0", "h1", "h2"], 1234, config="configs/pix2pix.py",
                                        data_dir="/data", workdir="/runs/p")
    assert [c[1] for c in cmds] == ["h0", "h1", "h2"]
    for i, c in enumerate(cmds):
        argv = shlex.split(c[2].split("&& ")[1].split(" 2>&1")[0])
        assert argv[:3] == ["python3", "-m", "deocc_jax.train"]
        assert "--coordinator_address=h0:1234" in argv and "--num_processes=3" in argv
        assert f"--process_id={i}" in argv and "--config.data_dir=/data" in argv


def test_gpu_cluster_slurm_script():
    script = gpu_cluster_lib.sbatch_script(4, 8, config="configs/deocc.py", data_dir="/d",
                                           workdir="/w", overrides=["batch_size=512"])
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=1" in script
    srun = [l for l in script.splitlines() if l.startswith("srun ")][0]
    assert "--distributed" in srun and "--config.batch_size=512" in srun


def test_local_sh_dry_run():
    env = pf.subprocess_env(DRY_RUN=1, PROCESSES=2, PYTHON="python3")
    out = subprocess.run(["bash", "launch/local.sh", "/d", "/w", "configs/tiny.py",
                          "--config.batch_size=16"], cwd=pf.REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert f"--process_id={i}" in line and "--num_processes=2" in line
        assert "--coordinator_address=localhost:" in line and "--config.batch_size=16" in line
