"""Trains a deocc model: `python -m deocc_jax.train --config=configs/tiny.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=16`. Multi-host:
add --distributed (Cloud TPU, SLURM and Open MPI are auto-detected) or give
--coordinator_address/--num_processes/--process_id explicitly.
"""

import contextlib
import os
import signal
import sys

from absl import flags, logging
from ml_collections import config_flags

from deocc_jax import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", 300, "How long processes wait for each other to join and to shut "
    "down (multi-host); raise it where one host may lag far behind the others.")
_BREAK_LOCK = flags.DEFINE_bool("break_lock", False, "Take over a workdir lock written from another "
                                "host, whose trainer cannot be checked (see the message); a "
                                "stale lock of this host is taken over without it.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise errors.InvalidInputError(f"unexpected arguments: {argv[1:]}")
    # After flag parsing, so XLA_FLAGS set by the caller apply before JAX starts.
    from deocc_jax.training import train_lib
    if _DISTRIBUTED.value or _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # jax.distributed reads JAX_COORDINATOR_ADDRESS from the environment (process count
        # and id then come from the flags or cluster auto-detection).
        train_lib.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                           timeout_s=_DISTRIBUTED_TIMEOUT.value)
    config = _CONFIG.value
    logging.info("config:\n%s", config)
    with contextlib.ExitStack() as stack:
        fm = None
        if config.eval_face_metrics:
            from deocc_jax.evaluation import face_metrics  # MediaPipe (and dlib) only when asked for
            # Closed here: left to the interpreter's exit, MediaPipe's finaliser raises.
            fm = stack.enter_context(face_metrics.FaceMetrics())
        result = train_lib.train_and_evaluate(config, _WORKDIR.value, face_metrics=fm,
                                              break_lock=_BREAK_LOCK.value)
    if result["preempted"]:
        # 143 (SIGTERM, a preemption notice): schedulers restart the job; 130 for Ctrl-C.
        logging.warning("stopped early at step %d by %s", result["step"],
                        signal.Signals(result["signal"]).name)
        sys.exit(128 + result["signal"])


def run():
    """Console-script entry point (`deocc-train`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    errors.run(main)


if __name__ == "__main__":
    run()
