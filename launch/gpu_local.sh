#!/usr/bin/env bash
# Train on this machine's GPU(s): a venv with CUDA JAX (`.[cuda]`), then one config.
#
#   launch/gpu_local.sh [--dry-run] CONFIG WORKDIR [more jaxrl-reason args, e.g. --gin_param ...]
#   e.g. launch/gpu_local.sh configs/experiments/demo.gin runs/demo
#
# Use configs/parallel/gpu_1.gin (in the experiment, or as an extra config) for one GPU.
# Re-running the same command resumes from the last checkpoint in WORKDIR. --dry-run
# prints every command it would run, and runs none. For several GPU hosts, see the
# README's "Many hosts" (one process per host, e.g. with srun).
set -euo pipefail

DRY=0
if [[ ${1:-} == --dry-run ]]; then
  DRY=1
  shift
fi
CONFIG=${1:?usage: $0 [--dry-run] CONFIG WORKDIR [jaxrl-reason args]}
WORKDIR=${2:?usage: $0 [--dry-run] CONFIG WORKDIR [jaxrl-reason args]}
shift 2
run() { # run a command, or with --dry-run print it (quoted as a shell would need it)
  if ((DRY)); then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
run cd "$ROOT"
cd "$ROOT"

[ -d .venv ] || run python3 -m venv .venv
run .venv/bin/pip install -q -e ".[cuda]"
# Fail early (not after loading data) when JAX cannot see a GPU.
run .venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"

# JAX pre-allocates 75% of GPU memory by default; the sampler's KV cache wants more.
MEM=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
TRAIN=(env XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM" .venv/bin/jaxrl-reason train "$CONFIG" --workdir "$WORKDIR" "$@")
if ((DRY)); then
  run "${TRAIN[@]}"
else
  exec "${TRAIN[@]}"
fi
