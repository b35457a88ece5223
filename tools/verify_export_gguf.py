#!/usr/bin/env python3
"""Hand-run check of a `compress export --format gguf` file with llama.cpp (llama-cpp-python; never run by CI).

    /work/venv-llama/bin/python tools/verify_export_gguf.py --gguf runs/x.gguf --text data/wiki.test.txt
        [--window 2048] [--max-tokens N] [--compress-ppl P] [--compress-tokens FILE] [--tolerance 0.001] [--json]

llama.cpp loads the file (Llama(model_path, logits_all=True, n_ctx=W)), tokenizes the text with the file's own
tokenizer metadata (no BOS, no special-token parsing; compared with `compress tokenize` ids when given) and
returns every position's logits for each window; the PPL is computed from them under our protocol:
consecutive non-overlapping windows of W tokens, no BOS, each window on its own (the KV cache reset), NLL of
token t+1 from the logits at t in float64, PPL = exp(Σ NLL / Σ predicted). With --compress-ppl, exits 1 unless
the relative difference is within --tolerance.
"""
import argparse
import json
import math
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
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    W = a.window
    t0 = time.time()
    llm = Llama(model_path=a.gguf, logits_all=True, n_ctx=W, n_batch=W, n_ubatch=W, n_threads=a.threads, verbose=False)
    load_seconds = time.time() - t0
    ids = llm.tokenize(open(a.text, encoding="utf-8").read().encode("utf-8"), add_bos=False, special=False)
    same_tokens = None
    if a.compress_tokens:
        raw = open(a.compress_tokens).read()
        ours = json.loads(raw)["ids"] if raw.lstrip().startswith("{") else [int(x) for x in raw.split()]
        same_tokens = ours == list(ids)
    usable = min(len(ids), a.max_tokens or len(ids))
    windows = usable // W
    total = 0.0
    t0 = time.time()
    for w in range(windows):
        x = ids[w * W:(w + 1) * W]
        llm.reset()
        llm.eval(x)
        logits = np.asarray(llm.scores[:W], dtype=np.float64)
        m = logits[:-1].max(axis=1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits[:-1] - m).sum(axis=1)))
        total += float((logz - logits[np.arange(W - 1), x[1:]]).sum())
    predicted = windows * (W - 1)
    meta = llm.metadata
    r = {"gguf": a.gguf, "architecture": meta.get("general.architecture"), "ppl": math.exp(total / predicted),
         "nll": total / predicted, "predicted_tokens": predicted, "windows": windows, "window": W, "stream_tokens": len(ids),
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
