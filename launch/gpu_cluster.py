"""Train deocc on a multi-host GPU cluster: one process per host, host 0 coordinates.

Two modes, both printing the exact commands with --dry_run:

* ssh (default): one `python -m deocc_jax.train` per host, started over ssh with
  --coordinator_address=HOST0:PORT --num_processes=N --process_id=i, as in the
  JAX multi-process guide (each process sees all GPUs of its host).
* slurm: writes an sbatch script running one task per node via srun; JAX's
  jax.distributed.initialize() reads SLURM's environment itself (--distributed).

    python launch/gpu_cluster.py --dry_run --hosts=gpu0,gpu1 \\
        --data_dir=/shared/pairs --workdir=/shared/runs/deocc1 --config=configs/deocc.py

The code, the dataset and the workdir should be on a filesystem every host sees
(or data copied to each host at the same path). Install once per host:
    pip install -r requirements.txt 'jax[cuda12]==0.10.2'
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags



FLAGS = flags.FLAGS


def define_flags() -> None:
    """Flags of this binary (defined only when run, so the module imports cleanly)."""
    flags.DEFINE_list("hosts", [], "Hostnames; the first one coordinates (ssh mode).")
    flags.DEFINE_integer("port", 12355, "Coordinator port on the first host.")
    flags.DEFINE_enum("mode", "ssh", ["ssh", "slurm"], "How processes are started.")
    flags.DEFINE_integer("nodes", 2, "Number of nodes (slurm mode).")
    flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node (slurm mode).")
    flags.DEFINE_string("config", "configs/deocc.py", "Config file.")
    flags.DEFINE_multi_string("override", [], "Config overrides KEY=VALUE.")
    flags.DEFINE_string("data_dir", None, "Dataset directory (same path on every host).")
    flags.DEFINE_string("workdir", None, "Workdir on a shared filesystem or gs://.")
    flags.DEFINE_string("repo", "~/deocc", "Repository path on the hosts.")
    flags.DEFINE_string("python", "python3", "Python executable on the hosts.")
    flags.DEFINE_string("sbatch_file", "deocc_train.sbatch", "Where to write the script.")
    flags.DEFINE_bool("dry_run", False, "Print instead of running.")


def train_args(config: str, data_dir: str, workdir: str, overrides: list[str] | None) -> list[str]:
    return (["-m", "deocc_jax.train", f"--config={config}", f"--config.data_dir={data_dir}",
             f"--workdir={workdir}"] + [f"--config.{o}" for o in overrides or []])


def ssh_commands(hosts: list[str], port: int, *, config: str, data_dir: str, workdir: str,
                 overrides: list[str] | None = None, repo: str = "~/deocc",
                 python: str = "python3") -> list[list[str]]:
    """One ssh command per host; process i runs on hosts[i]."""
    if not hosts:
        raise ValueError("--hosts is required in ssh mode")
    coordinator = f"{hosts[0]}:{port}"
    cmds = []
    for i, host in enumerate(hosts):
        train = [python] + train_args(config, data_dir, workdir, overrides) + [
            f"--coordinator_address={coordinator}", f"--num_processes={len(hosts)}",
            f"--process_id={i}"]
        remote = f"cd {repo} && {shlex.join(train)} 2>&1 | tee -a deocc_train_{i}.log"
        cmds.append(["ssh", host, remote])
    return cmds


def sbatch_script(nodes: int, gpus_per_node: int, *, config: str, data_dir: str, workdir: str,
                  overrides: list[str] | None = None, repo: str = "~/deocc",
                  python: str = "python3") -> str:
    """An sbatch script: one task per node, all GPUs of the node to that task."""
    train = shlex.join([python] + train_args(config, data_dir, workdir, overrides) + ["--distributed"])
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=deocc",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        "#SBATCH --signal=TERM@120   # SIGTERM 2 min before the time limit: save and exit",
        "#SBATCH --requeue",
        "#SBATCH --output=deocc_%j.log",
        f"cd {repo}",
        f"srun {train}",
        "",
    ])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.data_dir or not FLAGS.workdir:
        raise app.UsageError("--data_dir and --workdir are required")
    common = dict(config=FLAGS.config, data_dir=FLAGS.data_dir, workdir=FLAGS.workdir,
                  overrides=FLAGS.override, repo=FLAGS.repo, python=FLAGS.python)
    if FLAGS.mode == "slurm":
        script = sbatch_script(FLAGS.nodes, FLAGS.gpus_per_node, **common)
        if FLAGS.dry_run:
            print(script)
            print(shlex.join(["sbatch", FLAGS.sbatch_file]))
            return
        with open(FLAGS.sbatch_file, "w") as f:
            f.write(script)
        sys.exit(subprocess.call(["sbatch", FLAGS.sbatch_file]))
    cmds = ssh_commands(FLAGS.hosts, FLAGS.port, **common)
    for c in cmds:
        print(shlex.join(c), flush=True)
    if not FLAGS.dry_run:
        procs = [subprocess.Popen(c) for c in cmds]
        sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    define_flags()
    app.run(main)
