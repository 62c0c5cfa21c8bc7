#!/usr/bin/env bash
# Set up convae on a fresh machine: virtual environment, the CPU build of torch, the package,
# and the Fashion-MNIST data (Debian's dataset-fashion-mnist) where apt is available.
#   bash scripts/setup.sh          # what `make demo` needs
#   bash scripts/setup.sh --test   # also test extras and the browser for the report test
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU wheel on this machine
# kind). Never let pip pick torch by itself: that pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[[ "${1:-}" == "--test" ]] && TEST=1
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
fi
# torch is installed first and already satisfies convae's floor (torch>=2.6), so this adds nothing torch-related.
if [[ $TEST == 1 ]]; then
    "$VPY" -m pip install -q --disable-pip-version-check -e ".[test,export,baselines]"
else
    "$VPY" -m pip install -q --disable-pip-version-check -e ".[export,baselines]"
fi

apt_install() {  # apt_install PACKAGE... (only where apt exists and we may use it)
    command -v apt-get >/dev/null || { echo "setup: no apt-get; install $* by hand" >&2; return 0; }
    local SUDO=""
    [[ $(id -u) != 0 ]] && { command -v sudo >/dev/null && SUDO="sudo -n" || { echo "setup: not root; install $* by hand" >&2; return 0; }; }
    if ! $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null 2>&1 || true
        $SUDO apt-get install -y -qq "$@" >/dev/null || echo "setup: could not install $*" >&2
    fi
}
if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    apt_install dataset-fashion-mnist
fi
if [[ $TEST == 1 ]] && ! command -v chromium >/dev/null; then
    apt_install chromium chromium-driver
fi
"$VPY" -c "import convae, torch; print(f'convae {convae.__version__} ready (torch {torch.__version__})')"
