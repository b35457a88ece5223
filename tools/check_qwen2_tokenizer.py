#!/usr/bin/env python3
"""Whole-text parity of our Qwen2 tokenizer with Hugging Face's, on Qwen2.5-Coder-0.5B-Instruct's vocabulary.

Run by hand (never by CI); needs `transformers` and `gguf` (pip install transformers gguf; torch is not needed):

    tools/setup_assets.sh --qwen2     # the GGUF, 491,400,064 bytes
    tools/setup_assets.sh             # data/wiki.test.txt, if missing
    python3 tools/check_qwen2_tokenizer.py [--text data/wiki.test.txt] [--out-dir /tmp/qwen2-check]

1. Hugging Face's ids: `AutoTokenizer.from_pretrained(dir, gguf_file=name)` (HF_HUB_OFFLINE=1), the tokenizer
   transformers builds from the GGUF (`tokenizer.ggml.pre = qwen2`: Split with Qwen2.5's regex, then ByteLevel;
   no normalizer; BPE with ignore_merges false), `encode(text, add_special_tokens=False)`, written to
   OUT_DIR/hf_ids.i32 (little-endian int32).
2. Our ids: `swift test --filter Qwen2Tests/testWholeTextMatchesHuggingFace` with QWEN2_GGUF, QWEN2_TEXT,
   QWEN2_IDS and QWEN2_OUR_IDS set (Tests/TokenizerTests/Qwen2Tests.swift: our `BPETokenizer` with the `.qwen2`
   pre-tokenizer over the GGUF's tokenizer metadata), which writes OUT_DIR/our_ids.i32.
3. The comparison: both token counts, the number of differing positions and the first difference.

Exit status 0 when every id matches. The files in OUT_DIR are not committed.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def read_ids(path):
    data = Path(path).read_bytes()
    return list(struct.unpack(f"<{len(data) // 4}i", data))


def write_ids(path, ids):
    Path(path).write_bytes(struct.pack(f"<{len(ids)}i", *ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(ROOT / "assets/qwen2.5-coder-0.5b-instruct"
                                                    "/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    parser.add_argument("--text", default=str(ROOT / "data/wiki.test.txt"))
    parser.add_argument("--out-dir", default="/tmp/qwen2-check")
    parser.add_argument("--package-path", default=str(ROOT),
                        help="Swift package holding the TokenizerTests target (default: this repository)")
    parser.add_argument("--scratch-path", default=str(ROOT / ".build-tok"), help="swift build directory")
    parser.add_argument("--no-swift", action="store_true", help="only write Hugging Face's ids")
    args = parser.parse_args()

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    gguf = Path(args.gguf).resolve()
    text_path = Path(args.text).resolve()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = text_path.read_text(encoding="utf-8")
    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}; {text_path}: "
          f"{len(text.encode())} bytes, {len(text)} characters, NFC: {unicodedata.is_normalized('NFC', text)}")

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    built = json.loads(tok.backend_tokenizer.to_str())
    print(f"loaded {gguf.name} in {time.perf_counter() - start:.1f}s: {type(tok).__name__}, normalizer "
          f"{built['normalizer']}, ignore_merges {built['model']['ignore_merges']}")
    split = built["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    assert split == QWEN2_SPLIT, split
    start = time.perf_counter()
    hf_ids = tok.encode(text, add_special_tokens=False)
    print(f"Hugging Face: {len(hf_ids)} tokens in {time.perf_counter() - start:.2f}s")
    hf_path, our_path = out / "hf_ids.i32", out / "our_ids.i32"
    write_ids(hf_path, hf_ids)
    if args.no_swift:
        return 0

    if our_path.exists():
        our_path.unlink()
    env = dict(os.environ, QWEN2_GGUF=str(gguf), QWEN2_TEXT=str(text_path), QWEN2_IDS=str(hf_path.resolve()),
               QWEN2_OUR_IDS=str(our_path.resolve()))
    command = ["swift", "test", "--package-path", args.package_path, "--scratch-path", args.scratch_path,
               "--filter", "Qwen2Tests/testWholeTextMatchesHuggingFace"]
    print("running:", " ".join(command))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in result.stdout.splitlines() + result.stderr.splitlines():
        if line.startswith("qwen2 ") or "error:" in line:
            print("  swift:", line)
    if not our_path.exists():
        print(f"swift test wrote no ids (exit status {result.returncode})", file=sys.stderr)
        return 1

    ours = read_ids(our_path)
    differing = [i for i in range(min(len(ours), len(hf_ids))) if ours[i] != hf_ids[i]]
    print(f"ours: {len(ours)} tokens; Hugging Face: {len(hf_ids)} tokens; differing positions: {len(differing)}")
    if differing:
        i = differing[0]
        print(f"first difference at {i}: ours {ours[i:i + 8]} {tok.decode(ours[i:i + 8])!r}, "
              f"Hugging Face {hf_ids[i:i + 8]} {tok.decode(hf_ids[i:i + 8])!r}")
    same = not differing and len(ours) == len(hf_ids)
    print("every id matches" if same else "ids differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
