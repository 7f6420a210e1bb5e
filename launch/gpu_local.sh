#!/usr/bin/env bash
# Train on this machine's GPU(s): a venv with CUDA JAX (`.[cuda]`), then one config.
#
#   launch/gpu_local.sh CONFIG WORKDIR [more jaxrl-reason args, e.g. --gin_param ...]
#   e.g. launch/gpu_local.sh configs/experiments/demo.gin runs/demo
#
# Use configs/parallel/gpu_1.gin (in the experiment, or as an extra config) for one GPU.
# Re-running the same command resumes from the last checkpoint in WORKDIR.
set -euo pipefail

CONFIG=${1:?usage: $0 CONFIG WORKDIR [jaxrl-reason args]}
WORKDIR=${2:?usage: $0 CONFIG WORKDIR [jaxrl-reason args]}
shift 2
cd "$(dirname "$0")/.."

[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[cuda]"
# Fail early (not after loading data) when JAX cannot see a GPU.
.venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"

# JAX pre-allocates 75% of GPU memory by default; the sampler's KV cache wants more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec .venv/bin/jaxrl-reason train "$CONFIG" --workdir "$WORKDIR" "$@"
