#!/usr/bin/env python3
"""SparseGPT and GPTQ of all of SmolLM2 against one evaluation forward over as many tokens (issue 29, item 5).

    python3 benchmarks/calibration_speed.py [--samples 128] [--window 2048] [--precision bf16]
                                            [--hessian-precision bf16]
                                            [--recipes smollm2-sparsegpt-2of4,smollm2-cptquant-gptq-u4.5-g32]

One run, one machine, in this order: `compress eval` of the base checkpoint over the first samples × window tokens
of the train split (the forward with the LM head, the time the evaluator reports), each recipe's pass from
samples × window calibration tokens (`compress apply` with the recipe's calibration samples set, its eval stage
dropped, `--no-cache`), then the evaluation again; the pass's time is compared with the mean of the two evaluations
(the machine's speed drifts: the two bracket the passes). A pass's time is its stage's `seconds` (everything the stage
does, not the model load or tokenization); the report splits the layer-wise part into the calibration forward, the
Hessians (each window's Σ x xᵀ, a float32 Gram product summed in Float64; --hessian-precision bf16 sets the
stages' `hessian_precision`: bf16-rounded inputs, float32 accumulation) and the solves. The issue asks for at most
1.5× the evaluation in bf16. Needs a release build and tools/setup_assets.sh. SmolLM2's float32 weights are a
dequantized 4-bit GGUF (Q4_1).
"""
import argparse
import json
import os
import time

from bf16_calibration import COMPRESS, ROOT, find_timing, run_json, set_hessian_precision


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="smollm2-sparsegpt-2of4,smollm2-cptquant-gptq-u4.5-g32")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--out", default="/tmp/calibration-speed")
    ap.add_argument("--binary", default=COMPRESS, help="the compress executable (default: the release build)")
    ap.add_argument("--hessian-precision", choices=["fp32", "bf16"], default="fp32",
                    help="the stages' `hessian_precision` (bf16: Gram products of bf16-rounded inputs)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tokens = a.samples * a.window
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}; {cpu}; {os.cpu_count()} cores; {' '.join(isa)}; "
          f"{a.samples} x {a.window} = {tokens} tokens; precision {a.precision}; Hessians {a.hessian_precision}", flush=True)

    def evaluate(label):
        e = run_json([a.binary, "eval", "checkpoints/smollm2-135m.h5", "--text", "data/wiki.train.txt",
                      "--max-tokens", str(tokens), "--window", str(a.window), "--precision", a.precision, "--json"])
        print(f"eval forward ({label}): {e['seconds']:.1f} s, {e['tokens_per_second']:.1f} tok/s over {e['tokens']} "
              f"tokens ({e.get('kernels', '?')})", flush=True)
        return e["seconds"]

    before = evaluate("before")
    passes = []
    for name in a.recipes.split(","):
        r = json.load(open(os.path.join(ROOT, "recipes", name + ".json")))
        r["calibration"]["samples"] = a.samples
        r["calibration"]["window"] = a.window
        r["stages"] = [s for s in r["stages"] if s["stage"] != "eval"]
        r.pop("eval", None)
        set_hessian_precision(r, a.hessian_precision)
        out = os.path.join(a.out, f"{name}.h5")
        r["output"] = out
        path = os.path.join(a.out, f"{name}-{a.samples}x{a.window}.json")
        json.dump(r, open(path, "w"), indent=1)
        rep = run_json([a.binary, "apply", path, "-o", out, "--precision", a.precision, "--no-cache", "--force",
                        "--json"])
        stage = rep["stages"][0]
        timing = find_timing(stage.get("diagnostics")) or {}
        split = ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in timing.items())
        layerwise = sum(timing.values())
        print(f"{name}: pass {stage['seconds']:.1f} s (layer-wise {layerwise:.1f} s: {split}; rest of the stage "
              f"{stage['seconds'] - layerwise:.1f} s)", flush=True)
        passes.append((name, stage["seconds"], timing))
    after = evaluate("after")
    mean = (before + after) / 2
    print(f"\n| pass ({a.precision}, {a.samples} x {a.window} tokens) | seconds | forward | Hessians | solves | rest "
          f"| / eval forward ({mean:.1f} s) |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, t in passes:
        f, h, s = (t.get(k, 0.0) for k in ("forward_seconds", "hessian_seconds", "solve_seconds"))
        print(f"| {name} | {seconds:.1f} | {f:.1f} | {h:.1f} | {s:.1f} | {seconds - f - h - s:.1f} | "
              f"{seconds / mean:.2f}x |")
    print(f"eval forward before {before:.1f} s, after {after:.1f} s")


if __name__ == "__main__":
    main()
