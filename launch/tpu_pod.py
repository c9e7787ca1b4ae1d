"""Train deocc on a Cloud TPU VM slice: create, copy code, install, train on all workers, logs, delete.

Every host of a slice runs the same `python -m deocc_jax.train ... --distributed`
(JAX finds the other hosts itself on Cloud TPU). Commands follow the Cloud TPU
guide "Run JAX code on TPU slices" (gcloud compute tpus tpu-vm create / scp
--worker=all / ssh --worker=all --command / delete).

    python -m launch.tpu_pod --dry_run --name=deocc-v5e --zone=us-west4-a \\
        --accelerator_type=v5litepod-16 --version=v2-alpha-tpuv5-lite \\
        --data_gcs=gs://BUCKET/pairs --workdir=gs://BUCKET/runs/deocc1 \\
        --config=configs/deocc.py all

Actions: create, setup, data, train, logs, stop, delete, or all (create, setup,
data, train, logs). --dry_run prints the exact commands instead of running them.
The workdir should be on GCS so checkpoints outlive the VMs; the dataset is
copied to every worker's local disk (ArrayRecord random access wants local files).
"""

import shlex
import subprocess
import sys

from absl import app, flags

from launch import tpu_pod_lib

_NAME = flags.DEFINE_string("name", "deocc-tpu", "TPU VM name.")
_ZONE = flags.DEFINE_string("zone", "us-west4-a", "Zone with the accelerator type.")
_PROJECT = flags.DEFINE_string("project", None, "GCP project (default: gcloud's configured one).")
_ACCELERATOR_TYPE = flags.DEFINE_string("accelerator_type", "v5litepod-16",
                                        "e.g. v4-32, v5litepod-16, v5p-32.")
_VERSION = flags.DEFINE_string("version", "v2-alpha-tpuv5-lite", "TPU software (runtime) version.")
_SPOT = flags.DEFINE_bool("spot", False, "Create a Spot TPU (preemptible; training resumes).")
_CONFIG = flags.DEFINE_string("config", "configs/deocc.py", "Config file, relative to the repo.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides KEY=VALUE (no --config.).")
_DATA_GCS = flags.DEFINE_string("data_gcs", None, "gs:// path of the prepared dataset.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir, ideally gs://.")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", "deocc", "Code directory on the workers (under ~).")
_JAX_VERSION = flags.DEFINE_string("jax_version", "0.10.2", "jax[tpu] version to install.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print commands instead of running them.")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(f"give one action: {', '.join(tpu_pod_lib.ACTIONS + ('all',))}")
    commands = tpu_pod_lib.build_commands(
        argv[1], name=_NAME.value, zone=_ZONE.value, project=_PROJECT.value,
        accelerator_type=_ACCELERATOR_TYPE.value, version=_VERSION.value, spot=_SPOT.value,
        config=_CONFIG.value, overrides=_OVERRIDE.value, data_gcs=_DATA_GCS.value,
        workdir=_WORKDIR.value, remote_dir=_REMOTE_DIR.value, jax_version=_JAX_VERSION.value)
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if not _DRY_RUN.value:
            rc = subprocess.call(cmd)
            if rc != 0:
                sys.exit(rc)


if __name__ == "__main__":
    app.run(main)
