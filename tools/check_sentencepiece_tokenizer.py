#!/usr/bin/env python3
"""Parity of our SentencePiece tokenizer with Hugging Face's, on Gemma 3 270M's vocabulary (GGUF `llama` model).

Run by hand (never by CI); needs `transformers` and `gguf` (torch is not needed):

    tools/setup_assets.sh --gemma3-gguf-only    # the GGUF, 253,113,024 bytes
    tools/setup_assets.sh                       # data/wiki.test.txt, if missing
    python3 tools/check_sentencepiece_tokenizer.py [--text data/wiki.test.txt] [--out-dir /tmp/gemma3-tokenizer-check]

1. Hugging Face's ids: `AutoTokenizer.from_pretrained(dir, gguf_file=name)` (HF_HUB_OFFLINE=1), the tokenizer
   transformers builds from the GGUF (a `GemmaTokenizer`: BPE with byte_fallback, merges derived from the vocabulary
   in vocabulary order, whitespace tokens holding a space respelled with "▁", Replace(" ", "▁") normalizer, control
   and user-defined tokens added), `encode(text, add_special_tokens=False)` (no BOS), for
   - the whole text, written to OUT_DIR/hf_ids.i32 (little-endian int32), and
   - the cases: every text of Tests/TokenizerTests/Fixtures/tokenizer_cases.json (`cases`: the unicode, whitespace,
     digit and special-token texts the BPE tests use, Wikipedia paragraphs and raw wikitext; `pretokenize`: the
     pre-tokenizer texts and 400 random strings of tricky characters) and tools/make_tokenizer_fixture.py's
     SENTENCEPIECE_EXTRA (long space runs, literal "▁", tabs, tags), written to OUT_DIR/cases.json.
2. Our ids: `swift test --filter Gemma3Tests/...` with GEMMA3_GGUF, GEMMA3_TEXT, GEMMA3_IDS, GEMMA3_OUR_IDS,
   GEMMA3_CASES, GEMMA3_OUR_CASES and GEMMA3_MERGES set
   (Tests/TokenizerTests/Gemma3Tests.swift: our `SentencePieceTokenizer` over the GGUF's tokenizer metadata, with
   transformers' Gemma merge rule and no prefix space), which writes OUT_DIR/our_ids.i32 and OUT_DIR/our_cases.json.
   Gemma3Tests/testMergeListMatchesHuggingFace also compares our respelled vocabulary and derived merge list with
   transformers' (OUT_DIR/hf_model.json), entry for entry.
3. The comparison: token counts, the number of differing ids, and the first difference.

4. With --llama-cpp SDIST (an unpacked llama-cpp-python sdist whose vendored llama.cpp is built in
   vendor/llama.cpp/build/bin), llama.cpp as a second reader: `Llama(gguf, vocab_only=True).tokenize(text,
   add_bos=False, special=True)` on the same texts, compared with Hugging Face's (not used for the exit status).

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
sys.path.insert(0, str(ROOT / "tools"))


def read_ids(path):
    data = Path(path).read_bytes()
    return list(struct.unpack(f"<{len(data) // 4}i", data))


def write_ids(path, ids):
    Path(path).write_bytes(struct.pack(f"<{len(ids)}i", *ids))


def differing(ours, theirs):
    """Positions where two id lists differ, counting a length difference as differing positions."""
    return sum(a != b for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))


def compare_llama_cpp(sdist, gguf, text, hf_ids, cases):
    """llama.cpp's ids of the whole text and of the cases against Hugging Face's."""
    os.environ["LLAMA_CPP_LIB_PATH"] = str(sdist / "vendor/llama.cpp/build/bin")
    sys.path.insert(0, str(sdist))
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    print(f"llama.cpp {llama_cpp.__version__}: whole text {len(ids)} tokens, differing from Hugging Face: "
          f"{differing(ids, hf_ids)}")
    ours = [llm.tokenize(c["text"].encode(), add_bos=False, special=True) for c in cases]
    diffs = [differing(o, c["ids"]) for o, c in zip(ours, cases)]
    print(f"llama.cpp: cases {sum(map(len, ours))} tokens, differing from Hugging Face: {sum(diffs)} ids in "
          f"{sum(d > 0 for d in diffs)} texts")
    for d, c, o in zip(diffs, cases, ours):
        if d:
            print(f"  differs: {c['text'][:40]!r}: llama.cpp {o[:6]}, Hugging Face {c['ids'][:6]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(ROOT / "assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"))
    parser.add_argument("--text", default=str(ROOT / "data/wiki.test.txt"))
    parser.add_argument("--out-dir", default="/tmp/gemma3-tokenizer-check")
    parser.add_argument("--package-path", default=str(ROOT),
                        help="Swift package holding the TokenizerTests target (default: this repository)")
    parser.add_argument("--scratch-path", default=str(ROOT / ".build-tok"), help="swift build directory")
    parser.add_argument("--no-swift", action="store_true", help="only write Hugging Face's ids")
    parser.add_argument("--llama-cpp", help="llama-cpp-python sdist directory with a built vendor/llama.cpp")
    args = parser.parse_args()

    import tokenizers
    import transformers
    from transformers import AutoTokenizer
    from make_tokenizer_fixture import SENTENCEPIECE_EXTRA

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
    model = built["model"]
    print(f"loaded {gguf.name} in {time.perf_counter() - start:.1f}s: {type(tok).__name__}, {model['type']} with "
          f"byte_fallback {model['byte_fallback']}, {len(model['vocab'])} tokens, {len(model['merges'])} merges, "
          f"{len(built['added_tokens'])} added tokens, normalizer {built['normalizer']}")
    assert model["type"] == "BPE" and model["byte_fallback"], model["type"]

    start = time.perf_counter()
    hf_ids = tok.encode(text, add_special_tokens=False)
    print(f"Hugging Face: {len(hf_ids)} tokens in {time.perf_counter() - start:.2f}s")
    hf_path, our_path = out / "hf_ids.i32", out / "our_ids.i32"
    write_ids(hf_path, hf_ids)

    fixture = json.loads((ROOT / "Tests/TokenizerTests/Fixtures/tokenizer_cases.json").read_text(encoding="utf-8"))
    texts = [c["text"] for c in fixture["cases"]] + [c["text"] for c in fixture["pretokenize"]] + SENTENCEPIECE_EXTRA
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in texts]
    cases_path, our_cases_path = out / "cases.json", out / "our_cases.json"
    cases_path.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    merges_path = out / "hf_model.json"
    # The vocabulary as [token, "id"] pairs (Swift would fold canonically equivalent object keys together).
    vocab_pairs = [[token, str(i)] for token, i in model["vocab"].items()]
    merges_path.write_text(json.dumps({"vocab": vocab_pairs, "merges": model["merges"]}, ensure_ascii=False),
                           encoding="utf-8")
    print(f"cases: {len(cases)} texts, {sum(len(c['ids']) for c in cases)} Hugging Face ids")
    if args.no_swift:
        return 0

    for path in (our_path, our_cases_path):
        if path.exists():
            path.unlink()
    env = dict(os.environ, GEMMA3_GGUF=str(gguf), GEMMA3_TEXT=str(text_path), GEMMA3_IDS=str(hf_path.resolve()),
               GEMMA3_OUR_IDS=str(our_path.resolve()), GEMMA3_CASES=str(cases_path.resolve()),
               GEMMA3_OUR_CASES=str(our_cases_path.resolve()), GEMMA3_MERGES=str(merges_path.resolve()))
    command = ["swift", "test", "--package-path", args.package_path, "--scratch-path", args.scratch_path,
               "--filter", "Gemma3Tests/testWholeTextMatchesHuggingFace|Gemma3Tests/testCasesFileMatchesHuggingFace"
               "|Gemma3Tests/testMergeListMatchesHuggingFace"]
    print("running:", " ".join(command))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in result.stdout.splitlines() + result.stderr.splitlines():
        if line.startswith("gemma3 ") or "error:" in line:
            print("  swift:", line[:300])
    if not our_path.exists() or not our_cases_path.exists():
        print(f"swift test wrote no ids (exit status {result.returncode})", file=sys.stderr)
        return 1

    ours = read_ids(our_path)
    whole = differing(ours, hf_ids)
    print(f"whole text: ours {len(ours)} tokens; Hugging Face {len(hf_ids)} tokens; differing positions: {whole}")
    if whole:
        i = next((i for i, (a, b) in enumerate(zip(ours, hf_ids)) if a != b), min(len(ours), len(hf_ids)))
        print(f"  first difference at {i}: ours {ours[i:i + 8]} {tok.decode(ours[i:i + 8])!r}, "
              f"Hugging Face {hf_ids[i:i + 8]} {tok.decode(hf_ids[i:i + 8])!r}")
    our_cases = json.loads(our_cases_path.read_text())
    case_diffs = [differing(o, c["ids"]) for o, c in zip(our_cases, cases)]
    print(f"cases: {len(cases)} texts; ours {sum(map(len, our_cases))} tokens; Hugging Face "
          f"{sum(len(c['ids']) for c in cases)} tokens; differing ids: {sum(case_diffs)} in "
          f"{sum(d > 0 for d in case_diffs)} texts")
    for d, c in zip(case_diffs, cases):
        if d:
            print(f"  differs: {c['text'][:60]!r}")
    merges_same = "failed" not in result.stdout.split("testMergeListMatchesHuggingFace")[-1][:200] and result.returncode == 0
    print(f"vocabulary and {len(model['merges'])} merges equal transformers' (swift test): {merges_same}")
    if args.llama_cpp:
        compare_llama_cpp(Path(args.llama_cpp), gguf, text, hf_ids, cases)
    same = whole == 0 and sum(case_diffs) == 0 and merges_same
    print("every id matches" if same else "ids differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
