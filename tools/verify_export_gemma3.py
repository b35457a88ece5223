#!/usr/bin/env python3
"""Hand-run parity check of Gemma 3 exports (`compress export --format hf|gguf`) against our own numbers (never run by CI).

    # our side: the stream ids, the PPL and the first window's logits (see benchmarks/README.md, "Gemma 3 270M export
    # parity", for the exact commands)
    HF_HUB_OFFLINE=1 python3 tools/verify_export_gemma3.py --hf runs/gemma3-export/hf \
        --ids runs/gemma3-export/stream.ids --compress-ppl P --compress-logits runs/gemma3-export/ours.logits.f32 \
        [--text data/wiki.test.txt] [--window 2048] [--max-tokens 4096] [--logits-tokens 256] [--threads 2] [--json]
    PYTHONPATH=/work/llamacpp/llama_cpp_python-0.3.36 \
    LLAMA_CPP_LIB_PATH=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin \
    python3 tools/verify_export_gemma3.py --gguf runs/gemma3-export/f32.gguf --ids ... (the same options)

Reads the export with transformers (--hf: AutoModelForCausalLM in float32, and AutoTokenizer, both from the directory
alone) or llama.cpp (--gguf: llama-cpp-python, logits of every position, --kv-cache f32 by default) and scores the stream ids our
tokenizer gave (--ids: whitespace-separated, or `compress tokenize --json` output) under the BOS protocol Gemma's
tokenizer asks for (add_bos_token): consecutive non-overlapping chunks of W-1 stream tokens from the start, each window
[BOS] + chunk predicting all W-1 chunk tokens; windows = floor(min(stream, --max-tokens) / (W-1)); NLL in float64,
PPL = exp(sum NLL / predicted). Reports the relative difference to --compress-ppl, and, with --compress-logits (our
logits of the window [BOS] + the first L-1 stream tokens, L = --logits-tokens, float32 little-endian, L x vocab, as
`compress eval --window L --logits-out` writes them), the largest |logit difference|, the mean one, and the positions
whose argmax differs. With --text, also the reader's own tokenization of the text against --ids (transformers: the
exported tokenizer.json; llama.cpp: the GGUF's tokenizer metadata). Exits 1 when the PPL differs by more than
--tolerance (relative).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def read_ids(path):
    raw = open(path).read()
    return json.loads(raw)["ids"] if raw.lstrip().startswith("{") else [int(x) for x in raw.split()]


def nll_sum(logits, targets, chunk=256):
    """Sum of -log softmax(logits)[target] over rows, in float64 (rows processed in chunks)."""
    total = 0.0
    for s in range(0, len(targets), chunk):
        x = np.asarray(logits[s:s + chunk], dtype=np.float64)
        m = x.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
        total += float((logz - x[np.arange(len(x)), targets[s:s + chunk]]).sum())
    return total


class HFReader:
    def __init__(self, path, threads):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.bos = self.model.config.bos_token_id if self.model.config.bos_token_id is not None else self.tokenizer.bos_token_id
        self.info = {"reader": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
                     "model_class": type(self.model).__name__, "architectures": self.model.config.architectures,
                     "tokenizer_class": type(self.tokenizer).__name__, "attn_implementation": self.model.config._attn_implementation}

    def logits(self, ids):
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def tokenize(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


class GGUFReader:
    def __init__(self, path, threads, window, kv_cache):
        from llama_cpp import Llama
        self.window = window
        # ggml type ids: 0 f32, 1 f16 (llama.cpp's default, which rounds keys and values).
        kv = {"f32": 0, "f16": 1}[kv_cache]
        self.llm = Llama(model_path=path, logits_all=True, n_ctx=window, n_batch=window, n_ubatch=window, n_threads=threads,
                         type_k=kv, type_v=kv, verbose=False)
        self.bos = self.llm.token_bos()
        self.info = {"reader": "llama-cpp-python " + __import__("llama_cpp").__version__, "kv_cache": kv_cache,
                     "architecture": self.llm.metadata.get("general.architecture"),
                     "add_bos_token": self.llm.metadata.get("tokenizer.ggml.add_bos_token")}

    def logits(self, ids):
        assert len(ids) <= self.window
        self.llm.reset()
        self.llm.eval(ids)
        return np.asarray(self.llm.scores[:len(ids)], dtype=np.float32)

    def tokenize(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="a `compress export --format hf` directory")
    src.add_argument("--gguf", help="a `compress export --format gguf` file")
    ap.add_argument("--ids", required=True, help="our stream ids (compress tokenize), whitespace-separated or --json output")
    ap.add_argument("--text", help="also compare the reader's own tokenization of this text with --ids")
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=4096, help="stream tokens usable for the PPL")
    ap.add_argument("--compress-ppl", type=float)
    ap.add_argument("--compress-logits", help="our logits of [BOS] + the first L-1 stream tokens (L x vocab float32)")
    ap.add_argument("--logits-tokens", type=int, default=256, help="L: the window of --compress-logits")
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("--kv-cache", choices=["f32", "f16"], default="f32", help="llama.cpp's KV cache type (its default is f16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    t0 = time.time()
    reader = HFReader(a.hf, a.threads) if a.hf else GGUFReader(a.gguf, a.threads, max(a.window, a.logits_tokens), a.kv_cache)
    if reader.bos is None or reader.bos < 0:
        raise SystemExit("the export names no BOS token (Gemma's windows start with BOS)")
    r = {"export": a.hf or a.gguf, **reader.info, "bos_token_id": reader.bos, "load_seconds": time.time() - t0}
    ids = read_ids(a.ids)
    r["stream_tokens"] = len(ids)
    if a.text:
        theirs = reader.tokenize(open(a.text, encoding="utf-8").read())
        r["reader_tokens"] = len(theirs)
        r["reader_ids_differing"] = sum(x != y for x, y in zip(theirs, ids)) + abs(len(theirs) - len(ids))

    if a.compress_logits:
        L = a.logits_tokens
        ours = np.fromfile(a.compress_logits, dtype="<f4")
        if ours.size % L:
            raise SystemExit(f"{a.compress_logits}: {ours.size} floats is not {L} rows")
        ours = ours.reshape(L, -1)
        t1 = time.time()
        theirs = reader.logits([reader.bos] + ids[:L - 1])
        d = np.abs(theirs.astype(np.float64) - ours)
        r["logits"] = {"positions": L, "vocab": ours.shape[1], "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
                       "max_abs_logit": float(np.abs(ours).max()),
                       "argmax_differs": int((theirs.argmax(axis=1) != ours.argmax(axis=1)).sum()), "seconds": time.time() - t1}
        del ours, theirs, d

    W, C = a.window, a.window - 1
    usable = min(len(ids), a.max_tokens)
    windows = usable // C
    if windows == 0:
        raise SystemExit(f"need at least one whole window: {C} stream tokens per window, have {usable}")
    total, per_window = 0.0, []
    t1 = time.time()
    for w in range(windows):
        x = [reader.bos] + ids[w * C:(w + 1) * C]
        per_window.append(nll_sum(reader.logits(x)[:-1], np.asarray(x[1:])))
        total += per_window[-1]
        print(f"window {w + 1}/{windows}: nll {per_window[-1] / C:.6f}  {time.time() - t1:.0f} s", file=sys.stderr, flush=True)
    predicted = windows * C
    r.update({"window": W, "windows": windows, "predicted_tokens": predicted, "total_nll": total, "nll": total / predicted,
              "ppl": math.exp(total / predicted), "window_nll": per_window, "seconds": time.time() - t1})
    if a.compress_ppl:
        r["compress_ppl"] = a.compress_ppl
        r["relative_difference"] = r["ppl"] / a.compress_ppl - 1
        r["within_tolerance"] = abs(r["relative_difference"]) <= a.tolerance
    print(json.dumps(r) if a.json else json.dumps(r, indent=1))
    if a.compress_ppl and not r["within_tolerance"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
