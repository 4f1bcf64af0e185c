#!/usr/bin/env bash
# Makes the Python environment of the torch workloads and their tests in .venv (ignored by git):
# PyTorch (CPU), pytest and numpy, and the project's own package (`pip install ./python`).
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
"${pip[@]}" install --force-reinstall --no-deps ./python
"$venv/bin/python" -m ringmaster.torch.check
