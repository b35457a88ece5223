#!/usr/bin/env bash
# Installs what the build and the scripts need, when missing: Debian packages (apt-get as root, otherwise a
# message naming them), matplotlib for the sweep plots and, with --tests, gguf + safetensors for the export tests
# (pip, into the python3 on PATH). Used by
# tools/main.sh, tools/test.sh (--tests: also pytest) and .ci/run.
set -euo pipefail

PACKAGES=(libopenblas-dev libhdf5-dev libdnnl-dev pkg-config python3 python3-pip)  # OpenBLAS, HDF5, oneDNN (bf16), the downloads
missing=()
if command -v dpkg >/dev/null; then
    for pkg in "${PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
fi
if [ "${1:-}" = "--tests" ] && ! python3 -c 'import pytest' >/dev/null 2>&1; then
    missing+=(python3-pytest)  # the Python tests of the data tools (pip's pytest does as well)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]}" >&2
        echo "install them, e.g.: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# matplotlib for the sweep plots (tools/plot_sweep.py), into the python3 on PATH (which may not be Debian's).
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    echo "installing: matplotlib (pip, for $(command -v python3))"
    python3 -m pip install --quiet --disable-pip-version-check matplotlib >/dev/null 2>&1 \
        || echo "warning: could not install matplotlib; sweeps will skip their plots" >&2
fi

# gguf (llama.cpp's gguf-py) and safetensors, small PyPI wheels: the export tests parse our GGUF and safetensors
# outputs with them (tools/tests/test_export_formats.py).
if [ "${1:-}" = "--tests" ] && ! python3 -c 'import gguf, safetensors, numpy' >/dev/null 2>&1; then
    echo "installing: gguf safetensors numpy (pip, for $(command -v python3))"
    python3 -m pip install --quiet --disable-pip-version-check gguf safetensors numpy >/dev/null 2>&1 \
        || { echo "error: could not install gguf/safetensors for the export tests" >&2; exit 1; }
fi
