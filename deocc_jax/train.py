"""Trains a deocc model: `python -m deocc_jax.train --config=configs/tiny.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=16`. Multi-host:
add --distributed (Cloud TPU, SLURM and Open MPI are auto-detected) or give
--coordinator_address/--num_processes/--process_id explicitly.
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO lines from orbax (dozens per checkpoint) so the progress lines stay readable."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from deocc_jax import train_lib  # after flags, so XLA_FLAGS set by the caller apply
    # jax.distributed reads JAX_COORDINATOR_ADDRESS from the environment (process
    # count and id then come from the flags or cluster auto-detection).
    if _DISTRIBUTED.value or _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        train_lib.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("config:\n%s", _CONFIG.value)
    result = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if result["preempted"]:
        logging.warning("stopped early at step %d after a preemption notice", result["step"])
        sys.exit(train_lib.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
