"""Train deocc on a Cloud TPU VM slice: create, copy code, install, train on all workers, logs, delete.

Every host of a slice runs the same `python -m deocc_jax.train ... --distributed`
(JAX finds the other hosts itself on Cloud TPU). Commands follow the Cloud TPU
guide "Run JAX code on TPU slices" (gcloud compute tpus tpu-vm create / scp
--worker=all / ssh --worker=all --command / delete).

    python launch/tpu_pod.py --dry_run --name=deocc-v5e --zone=us-west4-a \\
        --accelerator_type=v5litepod-16 --version=v2-alpha-tpuv5-lite \\
        --data_gcs=gs://BUCKET/pairs --workdir=gs://BUCKET/runs/deocc1 \\
        --config=configs/deocc.py all

Actions: create, setup, data, train, logs, stop, delete, or all (create, setup,
data, train, logs). --dry_run prints the exact commands instead of running them.
The workdir should be on GCS so checkpoints outlive the VMs; the dataset is
copied to every worker's local disk (ArrayRecord random access wants local files).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Flags of this binary (defined only when run, so the module imports cleanly)."""
    flags.DEFINE_string("name", "deocc-tpu", "TPU VM name.")
    flags.DEFINE_string("zone", "us-west4-a", "Zone with the accelerator type.")
    flags.DEFINE_string("project", None, "GCP project (default: gcloud's configured one).")
    flags.DEFINE_string("accelerator_type", "v5litepod-16", "e.g. v4-32, v5litepod-16, v5p-32.")
    flags.DEFINE_string("version", "v2-alpha-tpuv5-lite", "TPU software (runtime) version.")
    flags.DEFINE_bool("spot", False, "Create a Spot TPU (preemptible; training resumes).")
    flags.DEFINE_string("config", "configs/deocc.py", "Config file, relative to the repo.")
    flags.DEFINE_multi_string("override", [], "Config overrides KEY=VALUE (no --config.).")
    flags.DEFINE_string("data_gcs", None, "gs:// path of the prepared dataset.")
    flags.DEFINE_string("workdir", None, "Workdir, ideally gs://.")
    flags.DEFINE_string("remote_dir", "deocc", "Code directory on the workers (under ~).")
    flags.DEFINE_string("jax_version", "0.10.2", "jax[tpu] version to install.")
    flags.DEFINE_bool("dry_run", False, "Print commands instead of running them.")


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


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(f"give one action: {', '.join(ACTIONS + ('all',))}")
    commands = build_commands(
        argv[1], name=FLAGS.name, zone=FLAGS.zone, project=FLAGS.project,
        accelerator_type=FLAGS.accelerator_type, version=FLAGS.version, spot=FLAGS.spot,
        config=FLAGS.config, overrides=FLAGS.override, data_gcs=FLAGS.data_gcs,
        workdir=FLAGS.workdir, remote_dir=FLAGS.remote_dir, jax_version=FLAGS.jax_version)
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if not FLAGS.dry_run:
            rc = subprocess.call(cmd)
            if rc != 0:
                sys.exit(rc)


if __name__ == "__main__":
    define_flags()
    app.run(main)
