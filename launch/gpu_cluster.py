"""Train deocc on a multi-host GPU cluster: one process per host, host 0 coordinates.

Two modes, both printing the exact commands with --dry_run:

* ssh (default): one `python -m deocc_jax.train` per host, started over ssh with
  --coordinator_address=HOST0:PORT --num_processes=N --process_id=i, as in the
  JAX multi-process guide (each process sees all GPUs of its host).
* slurm: writes an sbatch script running one task per node via srun; JAX's
  jax.distributed.initialize() reads SLURM's environment itself (--distributed).

    python -m launch.gpu_cluster --dry_run --hosts=gpu0,gpu1 \\
        --data_dir=/shared/pairs --workdir=/shared/runs/deocc1 --config=configs/deocc.py

The code, the dataset and the workdir should be on a filesystem every host sees
(or data copied to each host at the same path). Install once per host:
    pip install -r requirements.txt 'jax[cuda12]==0.10.2'
"""

import shlex
import subprocess
import sys

from absl import app, flags

from deocc_jax import errors
from deocc_jax.io import atomic
from launch import gpu_cluster_lib

_HOSTS = flags.DEFINE_list("hosts", [], "Hostnames; the first one coordinates (ssh mode).")
_PORT = flags.DEFINE_integer("port", 12355, "Coordinator port on the first host.")
_MODE = flags.DEFINE_enum("mode", "ssh", ["ssh", "slurm"], "How processes are started.")
_NODES = flags.DEFINE_integer("nodes", 2, "Number of nodes (slurm mode).")
_GPUS_PER_NODE = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node (slurm mode).")
_CONFIG = flags.DEFINE_string("config", "configs/deocc.py", "Config file.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Config overrides KEY=VALUE.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory (same path on every host).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir on a shared filesystem or gs://.")
_REPO = flags.DEFINE_string("repo", "~/deocc", "Repository path on the hosts.")
_PYTHON = flags.DEFINE_string("python", "python3", "Python executable on the hosts.")
_SBATCH_FILE = flags.DEFINE_string("sbatch_file", "deocc_train.sbatch",
                                   "Where to write the script.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --sbatch_file (else "
                               "refused).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print instead of running.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not _DATA_DIR.value or not _WORKDIR.value:
        raise app.UsageError("--data_dir and --workdir are required")
    common = dict(config=_CONFIG.value, data_dir=_DATA_DIR.value, workdir=_WORKDIR.value,
                  overrides=_OVERRIDE.value, repo=_REPO.value, python=_PYTHON.value)
    if _MODE.value == "slurm":
        script = gpu_cluster_lib.sbatch_script(_NODES.value, _GPUS_PER_NODE.value, **common)
        if _DRY_RUN.value:
            print(script)
            print(shlex.join(["sbatch", _SBATCH_FILE.value]))
            return
        atomic.write_text(_SBATCH_FILE.value, script, overwrite=_OVERWRITE.value)
        sys.exit(subprocess.call(["sbatch", _SBATCH_FILE.value]))
    cmds = gpu_cluster_lib.ssh_commands(_HOSTS.value, _PORT.value, **common)
    for c in cmds:
        print(shlex.join(c), flush=True)
    if not _DRY_RUN.value:
        procs = [subprocess.Popen(c) for c in cmds]
        sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    errors.run(main)
