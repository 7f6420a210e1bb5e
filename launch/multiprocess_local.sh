#!/usr/bin/env bash
# Run one config as N processes of one multi-controller JAX job on this machine, each with
# its own devices: what a TPU pod or a GPU cluster runs, on one CPU (the tests use it).
#
#   launch/multiprocess_local.sh [--dry-run] N CONFIG WORKDIR [more jaxrl-reason train args]
#   e.g. launch/multiprocess_local.sh 2 configs/experiments/demo.gin /tmp/demo2
#
# Process i runs `jaxrl-reason train CONFIG --workdir WORKDIR` with JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i; its output goes to LOGS/process_i.log, its
# pid to LOGS/process_i.pid and its exit status to LOGS/process_i.status. The script exits with the first failing process's status
# (143: stopped by SIGTERM after saving; re-running the same command resumes).
# Settings (environment): DEVICES_PER_PROCESS (simulated CPU devices each, default 4; 0:
# the platform's own devices, e.g. one GPU each with CUDA_VISIBLE_DEVICES set per
# process by you), PORT (default: a free one), LOGS (default WORKDIR.logs), PYTHON
# (default python3; it must import jaxrl_reason).
set -euo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then
  DRY=1
  shift
fi
USAGE="usage: $0 [--dry-run] N CONFIG WORKDIR [jaxrl-reason train args]"
N=${1:?$USAGE}
CONFIG=${2:?$USAGE}
WORKDIR=${3:?$USAGE}
shift 3
[[ $N =~ ^[1-9][0-9]*$ ]] || {
  echo "N must be a positive number of processes, got $N" >&2
  exit 2
}
PYTHON=${PYTHON:-python3}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}
LOGS=${LOGS:-$WORKDIR.logs}
if [[ -z ${PORT:-} ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi

ENVS=(JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$N")
if ((DEVICES_PER_PROCESS > 0)); then
  ENVS+=(JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
fi
CMD=("$PYTHON" -m jaxrl_reason.cli train "$CONFIG" --workdir "$WORKDIR" "$@")

if ((DRY)); then
  for ((i = 0; i < N; i++)); do
    printf '%q ' env "${ENVS[@]}" JAX_PROCESS_ID="$i" "${CMD[@]}"
    printf '> %q 2>&1 &\n' "$LOGS/process_$i.log"
  done
  exit 0
fi

mkdir -p "$LOGS"
PIDS=()
for ((i = 0; i < N; i++)); do
  env "${ENVS[@]}" JAX_PROCESS_ID="$i" "${CMD[@]}" >"$LOGS/process_$i.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$LOGS/process_$i.pid"
done
# A process that fails leaves the others waiting in a collective: stop them.
trap 'kill "${PIDS[@]}" 2>/dev/null || true' INT
STATUS=0
for ((left = N; left > 0; left--)); do
  code=0
  wait -n -p DONE || code=$? # the next of them to end (they are this shell's only jobs)
  for ((i = 0; i < N; i++)); do
    [[ ${PIDS[i]} == "$DONE" ]] && echo "$code" >"$LOGS/process_$i.status"
  done
  if ((code != 0 && STATUS == 0)); then
    STATUS=$code
    if ((code != 143)); then # an error, not a preemption: the others cannot finish
      sleep 10
      kill -9 "${PIDS[@]}" 2>/dev/null || true
    fi
  fi
done
for ((i = 0; i < N; i++)); do
  echo "process $i: $LOGS/process_$i.log"
done
exit "$STATUS"
