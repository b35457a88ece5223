#!/usr/bin/env bash
# The main job: build, fetch and prepare the real model and text on first use, evaluate SmolLM2 on the test split.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product compress
tools/setup_assets.sh
.build/release/compress eval checkpoints/smollm2-135m.h5 --text data/wiki.test.txt --window 2048 "$@"
