#!/usr/bin/env bash
# The main job: build, fetch and prepare the real model and text on first use, evaluate SmolLM2 on the test
# split; with a recipe argument, run that recipe on SmolLM2 instead (tools/main.sh recipes/NAME.json [--json]).
# Installs missing system packages first (tools/ensure_packages.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/ensure_packages.sh
swift build -c release --product compress
tools/setup_assets.sh
if [[ $# -gt 0 && "$1" == *.json ]]; then
    .build/release/compress apply "$@"
else
    .build/release/compress eval checkpoints/smollm2-135m.h5 --text data/wiki.test.txt --window 2048 "$@"
fi
