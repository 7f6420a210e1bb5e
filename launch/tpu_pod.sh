#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it (if needed), ship this checkout to every
# host, install it with TPU JAX, and run the same command on all hosts at once
# (`--worker=all`). JAX joins the hosts into one job by itself (`--find_peers`:
# jax.distributed.initialize() reads the pod's hosts from the TPU metadata server).
#
#   launch/tpu_pod.sh [--dry-run] CONFIG WORKDIR [more jaxrl-reason args, e.g. --gin_param ...]
#   WORKDIR must be a directory every host sees, e.g. a gcsfuse mount of a bucket
#   (gs:// URLs are not supported yet: the run code uses local paths).
#   e.g. launch/tpu_pod.sh configs/experiments/gsm8k_llama2_7b_sft_ei.gin /mnt/runs/gsm8k-7b-ei
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (v4-32, v5litepod-256, ...),
# RUNTIME (the TPU VM image), PROJECT (default: gcloud's). Re-running the same command
# resumes from the last checkpoint in the workdir, e.g. after a preemption. --dry-run
# prints every command it would run (gcloud, tar) and runs none.
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
TPU_NAME=${TPU_NAME:-jaxrl-reason}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
TPU=(gcloud compute tpus tpu-vm)
FLAGS=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

# Every host reads and writes the same workdir, so it must be shared storage mounted at the
# same absolute path on every host (e.g. gcsfuse); gs:// URLs are not read by the run code.
[[ $WORKDIR == /* ]] || {
  echo "workdir must be an absolute path on storage every host mounts, got $WORKDIR" >&2
  exit 1
}

# 1. The pod slice (a dry run prints both: whether it exists is not asked).
if ((DRY)) || ! "${TPU[@]}" describe "$TPU_NAME" "${FLAGS[@]}" >/dev/null 2>&1; then
  ((DRY)) && echo "# if \`$(printf '%q ' "${TPU[@]}" describe "$TPU_NAME" "${FLAGS[@]}")\` fails:"
  run "${TPU[@]}" create "$TPU_NAME" "${FLAGS[@]}" --accelerator-type "$ACCELERATOR" \
    --version "$RUNTIME"
fi

# 2. This checkout (tracked files, uncommitted edits included) on every host.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ((DRY)); then
  ARCHIVE=/tmp/jaxrl_reason.XXXXXX.tar.gz
  echo "cd $(printf '%q' "$ROOT") && git ls-files -z | tar --null -czf $ARCHIVE -T -"
else
  ARCHIVE=$(mktemp --suffix .tar.gz)
  git ls-files -z | tar --null -czf "$ARCHIVE" -T -
fi
run "${TPU[@]}" scp "$ARCHIVE" "$TPU_NAME":jaxrl_reason.tar.gz "${FLAGS[@]}" --worker=all
run rm -f "$ARCHIVE"

# 3. Install and run on all hosts; quotes keep the arguments intact through ssh.
# --find_peers: jax.distributed.initialize() learns the hosts from the TPU metadata server.
ARGS=$(printf '%q ' "$CONFIG" --workdir "$WORKDIR" --find_peers "$@")
run "${TPU[@]}" ssh "$TPU_NAME" "${FLAGS[@]}" --worker=all --command "
  set -e
  mkdir -p ~/jaxrl_reason && tar -xzf ~/jaxrl_reason.tar.gz -C ~/jaxrl_reason
  cd ~/jaxrl_reason
  [ -d .venv ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/jaxrl-reason train $ARGS 2>&1 | tee -a ~/train.log
"
