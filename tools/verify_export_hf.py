#!/usr/bin/env python3
"""Hand-run check of a `compress export --format hf` directory with transformers (never run by CI).

    python3 tools/verify_export_hf.py --dir runs/x-hf --text data/wiki.test.txt [--window 2048] [--max-tokens N]
        [--compress-ppl P] [--compress-tokens FILE] [--tolerance 0.001] [--threads 1] [--json]

Loads the directory offline with AutoModelForCausalLM / AutoTokenizer (float32 compute; a compressed-tensors
config needs the `compressed-tensors` package), tokenizes the text with the exported tokenizer.json (no special
tokens; compared with `compress tokenize` ids when --compress-tokens is given) and scores it under our
protocol: consecutive non-overlapping windows of W tokens, no BOS, each window on its own, PPL = exp(Σ NLL /
Σ predicted) in float64 (as tools/reference_eval.py). With --compress-ppl, exits 1 unless the relative
difference is within --tolerance.
"""
import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--compress-ppl", type=float)
    ap.add_argument("--compress-tokens", help="file of `compress tokenize --json` output or whitespace-separated ids")
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(a.dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(a.dir, local_files_only=True, dtype=torch.float32).eval()
    load_seconds = time.time() - t0
    ids = tok(open(a.text, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    same_tokens = None
    if a.compress_tokens:
        raw = open(a.compress_tokens).read()
        ours = json.loads(raw)["ids"] if raw.lstrip().startswith("{") else [int(x) for x in raw.split()]
        same_tokens = ours == ids
    usable = min(len(ids), a.max_tokens or len(ids))
    W = a.window
    windows = usable // W
    total = 0.0
    t0 = time.time()
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor(ids[w * W:(w + 1) * W]).unsqueeze(0)
            logits = model(x).logits[0].double()
            nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum")
            total += nll.item()
    predicted = windows * (W - 1)
    r = {"dir": a.dir, "architecture": model.config.architectures, "model_class": type(model).__name__,
         "quantization": getattr(model.config, "quantization_config", None) is not None,
         "ppl": math.exp(total / predicted), "nll": total / predicted, "predicted_tokens": predicted, "windows": windows,
         "window": W, "stream_tokens": len(ids), "same_tokens_as_compress": same_tokens, "load_seconds": load_seconds,
         "seconds": time.time() - t0, "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    if a.compress_ppl:
        r["compress_ppl"] = a.compress_ppl
        r["relative_difference"] = r["ppl"] / a.compress_ppl - 1
        r["within_tolerance"] = abs(r["relative_difference"]) <= a.tolerance
    print(json.dumps(r) if a.json else json.dumps(r, indent=1))
    if a.compress_ppl and not r["within_tolerance"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
