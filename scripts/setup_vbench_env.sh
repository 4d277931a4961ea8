#!/usr/bin/env bash
# Create the separate Python environment that eval's VBench Quality Score runs in.
#
# vbench 0.1.5 pins transformers==4.33.2 and numpy<2, so it cannot share an environment with
# the harness (diffusers 0.42 / transformers 5). Eval runs it as a subprocess with this
# environment's python (config value vbench.python, or the VBENCH_PYTHON environment variable).
#
# Usage:  bash scripts/setup_vbench_env.sh [VENV_DIR]      (default: .venv-vbench)
#         PYTHON=python3.11 bash scripts/setup_vbench_env.sh /opt/vbench-venv
# Takes ~90 s and ~2.2 GB. VBench's own model weights (DINO, CLIP, AMT, RAFT, LAION aesthetic,
# MUSIQ) are fetched by VBench into $VBENCH_CACHE_DIR (default ~/.cache/vbench) the first time a
# dimension runs; on an offline machine fetch them beforehand (eval names the missing files).
set -euo pipefail

VENV_DIR="${1:-.venv-vbench}"
PYTHON_BIN="${PYTHON:-python3}"

if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
    echo "setup_vbench_env.sh: '$PYTHON_BIN' not found; set PYTHON=/path/to/python3.10-or-3.11" >&2
    exit 2
fi

"$PYTHON_BIN" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --upgrade pip
# setuptools<81 still ships pkg_resources, which vbench imports.
# torch and torchvision must be the registry's matching builds: "===" keeps pip from pairing the
# registry's torchvision with a local "+cpu" torch wheel (torchvision::nms would then be missing).
"$VENV_DIR/bin/python" -m pip install 'setuptools<81' 'torch===2.13.0' 'torchvision==0.28.0' 'vbench==0.1.5'
"$VENV_DIR/bin/python" -c "import torch, torchvision, vbench; print('vbench environment ready: torch', torch.__version__)"

echo
echo "Use it with:  python -m eval ... vbench.enabled=true vbench.python=$VENV_DIR/bin/python"
echo "         or:  export VBENCH_PYTHON=$VENV_DIR/bin/python"
