#!/usr/bin/env bash
# Local training runs. DRY_RUN=1 prints the commands instead of running them.
#
#   launch/local.sh DATA_DIR WORKDIR [CONFIG] [extra flags...]
#       one process using every local device (CPU or GPU).
#   PROCESSES=2 launch/local.sh DATA_DIR WORKDIR configs/tiny.py
#       a multi-process rehearsal on one machine: N processes with 4 fake CPU
#       devices each, coordinated through jax.distributed on localhost (gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  echo "usage: $0 DATA_DIR WORKDIR [CONFIG] [--config.KEY=VALUE ...]" >&2
  exit 2
fi
DATA_DIR=$1; WORKDIR=$2; CONFIG=${3:-configs/tiny.py}
shift $(( $# >= 3 ? 3 : 2 ))
PYTHON=${PYTHON:-python}
PROCESSES=${PROCESSES:-1}
PORT=${PORT:-12355}

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "$*"; else "$@"; fi
}

if [[ "$PROCESSES" == 1 ]]; then
  run "$PYTHON" -m deocc_jax.train --config="$CONFIG" --config.data_dir="$DATA_DIR" \
    --workdir="$WORKDIR" "$@"
  exit 0
fi

pids=()
for ((i = 0; i < PROCESSES; i++)); do
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu $PYTHON -m deocc_jax.train" \
      "--config=$CONFIG --config.data_dir=$DATA_DIR --workdir=$WORKDIR" \
      "--coordinator_address=localhost:$PORT --num_processes=$PROCESSES --process_id=$i $*"
  else
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu "$PYTHON" -m deocc_jax.train \
      --config="$CONFIG" --config.data_dir="$DATA_DIR" --workdir="$WORKDIR" \
      --coordinator_address="localhost:$PORT" --num_processes="$PROCESSES" --process_id="$i" "$@" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
