#!/usr/bin/env python3
"""Hand-run check of a `compress export --format gguf` file with llama.cpp (llama-cpp-python; never run by CI).

    PYTHONPATH=/work/llamacpp/llama_cpp_python-0.3.36 \
    LLAMA_CPP_LIB_PATH=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
    python3 tools/verify_export_gguf.py --gguf runs/x.gguf --text data/wiki.test.txt
        [--window 2048] [--max-tokens N] [--ids FILE] [--bos auto|on|off] [--compress-ppl P] [--compress-tokens FILE]
        [--tolerance 0.001] [--threads 1] [--json]

llama.cpp loads the file (Llama(model_path, logits_all=True, n_ctx=W)), tokenizes the text with the file's own
tokenizer metadata (no BOS, no special-token parsing; compared with `compress tokenize` ids when given) or takes the
stream's ids from --ids (whitespace-separated, e.g. transformers' from tools/reference_eval.py --tokens-out, so both
readers score identical ids) and returns every position's logits for each window; the PPL is computed from them under
our protocol, each window on its own (the KV cache reset), NLL of token t+1 from the logits at t in float64,
PPL = exp(Σ NLL / Σ predicted):
- no BOS (the file's tokenizer.ggml.add_bos_token false or absent): consecutive non-overlapping windows of W stream
  tokens, each predicting its tokens 2..W; windows = floor(usable / W).
- BOS (add_bos_token true, e.g. Gemma): consecutive non-overlapping chunks of W-1 stream tokens, each window
  [BOS] + chunk predicting all W-1 chunk tokens (never the BOS); windows = floor(usable / (W-1)).
usable = min(stream tokens, --max-tokens), stream tokens only. --bos on / off overrides the file's setting.
With --compress-ppl, exits 1 unless the relative difference is within --tolerance.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--compress-ppl", type=float)
    ap.add_argument("--compress-tokens")
    ap.add_argument("--ids", help="score these stream ids (whitespace-separated) instead of llama.cpp's tokenization")
    ap.add_argument("--bos", choices=["auto", "on", "off"], default="auto",
                    help="BOS protocol: auto follows the file's tokenizer.ggml.add_bos_token (default)")
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    W = a.window
    t0 = time.time()
    llm = Llama(model_path=a.gguf, logits_all=True, n_ctx=W, n_batch=W, n_ubatch=W, n_threads=a.threads, verbose=False)
    load_seconds = time.time() - t0
    if a.ids:
        ids = [int(x) for x in open(a.ids).read().split()]
    else:
        ids = llm.tokenize(open(a.text, encoding="utf-8").read().encode("utf-8"), add_bos=False, special=False)
    meta = llm.metadata
    add_bos = (meta.get("tokenizer.ggml.add_bos_token", "false") == "true") if a.bos == "auto" else a.bos == "on"
    bos = llm.token_bos() if add_bos else None
    if add_bos and (bos is None or bos < 0):
        raise SystemExit(f"{a.gguf}: add_bos_token is true but tokenizer.ggml.bos_token_id is missing")
    C = W - 1 if add_bos else W  # stream tokens per window
    same_tokens = None
    if a.compress_tokens:
        raw = open(a.compress_tokens).read()
        ours = json.loads(raw)["ids"] if raw.lstrip().startswith("{") else [int(x) for x in raw.split()]
        same_tokens = ours == list(ids)
    usable = min(len(ids), a.max_tokens or len(ids))
    windows = usable // C
    if windows == 0:
        raise SystemExit(f"need at least one whole window: {C} stream tokens per window, have {usable}")
    total = 0.0
    window_nll = []
    t0 = time.time()
    for w in range(windows):
        x = ([bos] if add_bos else []) + list(ids[w * C:(w + 1) * C])
        llm.reset()
        llm.eval(x)
        # Rows of logits in float64, 128 at a time: a whole (W, V) window in float64 with its temporaries would
        # need about 13 GB at Gemma's 262,144-token vocabulary.
        nll = 0.0
        for r0 in range(0, W - 1, 128):
            r1 = min(r0 + 128, W - 1)
            rows = np.asarray(llm.scores[r0:r1], dtype=np.float64)
            m = rows.max(axis=1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))
            nll += float((logz - rows[np.arange(r1 - r0), x[r0 + 1:r1 + 1]]).sum())
        window_nll.append(nll)
        total += window_nll[-1]
        print(f"window {w + 1}/{windows}: nll {window_nll[-1] / (W - 1):.6f}  {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    predicted = windows * (W - 1)
    r = {"gguf": a.gguf, "architecture": meta.get("general.architecture"), "ppl": math.exp(total / predicted),
         "nll": total / predicted, "total_nll": total, "predicted_tokens": predicted, "windows": windows, "window": W,
         "stream_tokens": len(ids), "ids_from": a.ids or "llama.cpp", "bos": add_bos, "bos_token_id": bos,
         "usable_stream_tokens": usable, "scored_stream_tokens": windows * C, "window_nll": window_nll,
         "same_tokens_as_compress": same_tokens, "load_seconds": load_seconds, "seconds": time.time() - t0,
         "llama_cpp_python": __import__("llama_cpp").__version__}
    if a.compress_ppl:
        r["compress_ppl"] = a.compress_ppl
        r["relative_difference"] = r["ppl"] / a.compress_ppl - 1
        r["within_tolerance"] = abs(r["relative_difference"]) <= a.tolerance
    print(json.dumps(r) if a.json else json.dumps(r, indent=1))
    if a.compress_ppl and not r["within_tolerance"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
