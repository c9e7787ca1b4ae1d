"""The commands that train deocc on a Cloud TPU VM slice, one list of argv lists per action.

The library of `python -m launch.tpu_pod`. The commands follow the Cloud TPU guide "Run JAX code
on TPU slices": every host of a slice runs the same `python -m deocc_jax.train ... --distributed`.
"""

from __future__ import annotations

import shlex

ACTIONS = ("create", "setup", "data", "train", "logs", "stop", "delete")
LOCAL_DATA = "/tmp/deocc_data"
LOG_FILE = "~/deocc_train.log"
PID_FILE = "~/deocc_train.pid"


def _where(name: str, zone: str, project: str | None) -> list[str]:
    return [name, f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def _ssh_all(name, zone, project, command: str) -> list[str]:
    return (["gcloud", "compute", "tpus", "tpu-vm", "ssh"] + _where(name, zone, project)
            + ["--worker=all", f"--command={command}"])


def build_commands(action: str, *, name: str, zone: str, project: str | None = None,
                   accelerator_type: str = "v5litepod-16", version: str = "v2-alpha-tpuv5-lite",
                   spot: bool = False, config: str = "configs/deocc.py",
                   overrides: list[str] | None = None, data_gcs: str | None = None,
                   workdir: str | None = None, remote_dir: str = "deocc",
                   jax_version: str = "0.10.2") -> list[list[str]]:
    """argv lists (run in order, from the repo root) for one action."""
    if action == "all":
        return [c for a in ("create", "setup", "data", "train", "logs") for c in build_commands(
            a, name=name, zone=zone, project=project, accelerator_type=accelerator_type,
            version=version, spot=spot, config=config, overrides=overrides, data_gcs=data_gcs,
            workdir=workdir, remote_dir=remote_dir, jax_version=jax_version)]
    if action == "create":
        return [["gcloud", "compute", "tpus", "tpu-vm", "create"] + _where(name, zone, project)
                + [f"--accelerator-type={accelerator_type}", f"--version={version}"]
                + (["--spot"] if spot else [])]
    if action == "setup":
        archive = "/tmp/deocc_code.tar.gz"
        return [
            ["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{name}:deocc_code.tar.gz"]
            + _where(name, zone, project)[1:] + ["--worker=all"],
            _ssh_all(name, zone, project,
                     f"mkdir -p ~/{remote_dir} && tar -xzf ~/deocc_code.tar.gz -C ~/{remote_dir} && "
                     f"cd ~/{remote_dir} && python3 -m pip install -q -r requirements.txt "
                     f"'jax[tpu]=={jax_version}'"),
        ]
    if action == "data":
        if not data_gcs:
            raise ValueError("--data_gcs is required for the data action")
        return [_ssh_all(name, zone, project,
                         f"mkdir -p {LOCAL_DATA} && gcloud storage cp -r "
                         f"{shlex.quote(data_gcs.rstrip('/') + '/*')} {LOCAL_DATA}/")]
    if action == "train":
        if not workdir:
            raise ValueError("--workdir is required for the train action")
        train = ["python3", "-m", "deocc_jax.train", f"--config={config}",
                 f"--config.data_dir={LOCAL_DATA}", f"--workdir={workdir}", "--distributed"]
        train += [f"--config.{o}" for o in overrides or []]
        # Background + log file so an ssh disconnect does not kill training;
        # `stop` sends SIGTERM, which makes every host save and exit cleanly.
        cmd = (f"cd ~/{remote_dir} && nohup {shlex.join(train)} > {LOG_FILE} 2>&1 & "
               f"echo $! > {PID_FILE}")
        return [_ssh_all(name, zone, project, cmd)]
    if action == "logs":
        return [["gcloud", "compute", "tpus", "tpu-vm", "ssh"] + _where(name, zone, project)
                + ["--worker=0", f"--command=tail -n 100 -f {LOG_FILE}"]]
    if action == "stop":
        return [_ssh_all(name, zone, project, f"kill -TERM $(cat {PID_FILE})")]
    if action == "delete":
        return [["gcloud", "compute", "tpus", "tpu-vm", "delete"] + _where(name, zone, project)
                + ["--quiet"]]
    raise ValueError(f"unknown action {action!r}; choose from {ACTIONS + ('all',)}")
