#!/usr/bin/env bash
# The one-command GPU check (issue #18): bf16 training MFU (Llama 3.2 1B, then 3B if the
# time allows), sampler tokens/s against transformers generate, peak GPU memory, compile
# times, and a 20-step SFT + 1 EI round of the demo; writes OUT/device_check.json and
# OUT/device_check.md (benchmarks/device_check.py does the work; see its docstring).
#
#   bash benchmarks/device_check.sh --out DIR [--wheels DIR [--no-deps]] [--venv PATH]
#        [--python PY] [--cpu-smoke] [--time-limit-s N] [-- ARGS for device_check.py]
#
# Environments (pick one):
#   --wheels DIR           pip install --no-index --find-links DIR ".[EXTRAS]" into a fresh
#                          venv (--venv PATH, default /tmp/jaxrl_reason_device_venv) made by
#                          --python; DIR must hold every wheel (setuptools, wheel too).
#   --wheels DIR --no-deps install only DIR's wheels (pip --target /tmp/jaxrl_reason_site) for
#                          an interpreter that already has jax with CUDA (--python).
#   --venv PATH            use PATH/bin/python as it is (a venv carried along).
#   (neither)              use --python (default: $PYTHON or python3) as it is.
# --extras LIST (default cuda) are the extras installed with --wheels; "cuda,interop" adds
# torch + transformers for the comparison. --time-limit-s (default 480; 900 with
# --cpu-smoke) ends the check, install included; time-budgeted steps stop 30 s before it.
# Exit code: 0 if no step failed.
set -uo pipefail

die() { echo "device_check.sh: $*" >&2; exit 2; }
need() { (($# >= 2)) && [[ "$2" != --* ]] || die "$1 needs a value (see --help)"; }
started=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="" wheels="" venv="" python="${PYTHON:-python3}" no_deps=0 extras=cuda smoke=0 limit=""
passthrough=()
while (($#)); do
  case "$1" in
    --out) need "$@"; out="$2"; shift 2 ;;
    --wheels) need "$@"; wheels="$2"; shift 2 ;;
    --venv) need "$@"; venv="$2"; shift 2 ;;
    --python) need "$@"; python="$2"; shift 2 ;;
    --extras) need "$@"; extras="$2"; shift 2 ;;
    --no-deps) no_deps=1; shift ;;
    --cpu-smoke) smoke=1; shift ;;
    --time-limit-s) need "$@"; limit="$2"; shift 2 ;;
    --) shift; passthrough=("$@"); break ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$out" ]] || die "--out DIR is required: where device_check.json and .md go"
[[ -z "$wheels" || -d "$wheels" ]] || die "--wheels '$wheels' is not a directory of wheels"
((no_deps == 0 || ${#wheels})) || die "--no-deps only goes with --wheels DIR"
[[ -z "$limit" || "$limit" =~ ^[0-9]+$ ]] || die "--time-limit-s '$limit': give whole seconds"
limit=${limit:-$((smoke ? 900 : 480))}
((limit > 60)) || die "--time-limit-s $limit: give more than 60 seconds"
mkdir -p "$out" || die "cannot create --out '$out'"
out=$(cd "$out" && pwd)

# The environment: install (logged to OUT/install.log) or take one as it is.
install_status=none install_detail="" site=""
if [[ -n "$wheels" ]]; then
  wheels=$(cd "$wheels" && pwd)
  if ((no_deps)); then
    site=/tmp/jaxrl_reason_site
    install_detail="$python + pip install --no-deps --target $site $wheels/*.whl"
    cmd=("$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site")
    cmd+=("$wheels"/*.whl)
  else
    venv=${venv:-/tmp/jaxrl_reason_device_venv}
    install_detail="pip install --no-index --find-links $wheels '.[${extras}]' into $venv"
    spec="$repo"
    [[ -n "$extras" ]] && spec="$repo[$extras]"
    cmd=(bash -c '"$1" -m venv "$2" && "$2/bin/python" -m pip install -q --no-index \
      --find-links "$3" "$4"' _ "$python" "$venv" "$wheels" "$spec")
  fi
  echo "device_check.sh: installing: $install_detail"
  if "${cmd[@]}" >"$out/install.log" 2>&1; then
    install_status=ok
  else
    install_status=failed
    why=$(grep -m 2 'ERROR' "$out/install.log" || tail -n 2 "$out/install.log")
    install_detail="$install_detail failed (install.log): $(tr '\n' ' ' <<<"$why")"
    echo "device_check.sh: $install_detail" >&2
  fi
fi
if [[ -n "$venv" && "$install_status" != failed ]]; then # else $python records the failure
  python="$venv/bin/python"
  [[ -x "$python" ]] || die "--venv '$venv' has no bin/python"
  [[ -n "$wheels" ]] || install_detail="the venv $venv as it is"
fi
[[ -x "$python" ]] || command -v "$python" >/dev/null || die "no python '$python' (--python)"
[[ -n "$wheels" || -n "$venv" ]] || install_detail="$python as it is"
install_s=$(($(date +%s) - started))

export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
smoke_flag=()
((smoke)) && smoke_flag=(--cpu-smoke)
left=$((limit - ($(date +%s) - started)))
((left > 30)) || left=31
cd "$repo" || die "cannot enter $repo"
timeout --kill-after=15 "$left" "$python" -m benchmarks.device_check --out "$out" \
  "${smoke_flag[@]}" --started-at "$started" --budget-s $((limit - 30)) \
  --install-status "$install_status" --install-detail "$install_detail" \
  --install-seconds "$install_s" "${passthrough[@]}" 2>&1 | tee "$out/device_check.log"
rc=${PIPESTATUS[0]}
if ((rc != 0)); then # if it died (time limit, crash), mark the step it was in as failed
  "$python" -m benchmarks.device_check --out "$out" --finalize --exit-code "$rc" ||
    echo "device_check.sh: could not finalize $out/device_check.json" >&2
fi
echo "device_check.sh: exit code $rc; $out/device_check.json and device_check.md"
exit "$rc"
