"""The commands that train deocc on a multi-host GPU cluster: ssh per host, or an sbatch script.

The library of `python -m launch.gpu_cluster`: one `python -m deocc_jax.train` process per host,
host 0 coordinating (the JAX multi-process guide's --coordinator_address, --num_processes and
--process_id), or one SLURM task per node whose environment jax.distributed reads itself.
"""

from __future__ import annotations

import shlex


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
