#!/usr/bin/env python3
"""Training speed on SmolLM2-135M's shape: our trainer against PyTorch (transformers, float32), one run, same
machine, same batch shape. Prints both figures, their ratio and both peak memories.

    python3 benchmarks/train_speed.py [--batch 4] [--window 512] [--steps 5] [--warmup 2] [--threads 2] \
        [--precision fp32|bf16] [--repeats 1]
    python3 benchmarks/train_speed.py --pytorch-only [--json]     # the PyTorch figure alone

One training step, both sides: forward of a (B, W) batch of random token ids with labels = ids (next-token
cross-entropy, HF's loss), backward, gradient clipping to global norm 1.0, an AdamW update (lr 1e-4, weight
decay 0.1), zero the gradients. tokens/s = timed steps * B * W / seconds of the timed steps (after --warmup
untimed steps). PyTorch side: LlamaForCausalLM (SDPA attention, the default) with SmolLM2-135M's config, float32,
torch.set_num_threads(--threads), weights from checkpoints/smollm2-135m.h5 if present (else random init; the
output says which); it runs in its own process so its peak RSS (ru_maxrss) is its own. Our side:
`.build/release/compress bench-train --batch B --window W --steps S --warmup N --json` (needs a release build,
swift build -c release); the environment (OPENBLAS_CORETYPE) is passed to both.

--precision bf16: ours `bench-train --precision bf16` (oneDNN bf16 products, float32 accumulation, master weights
and AdamW); PyTorch's forward and loss under torch.autocast("cpu", bfloat16), the backward of that graph, float32
weights and AdamW (its usual mixed precision on CPU). Reading the checkpoint needs h5py: installed with pip when
missing (or named, if pip cannot).

--repeats N runs ours then PyTorch N times in turn and prints each pair and the medians (this machine's speed
drifts by ±15 % within minutes, a shared host).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints/smollm2-135m.h5")
COMPRESS = os.path.join(ROOT, ".build/release/compress")

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                    tie_word_embeddings=True, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                    hidden_act="silu", attention_bias=False, mlp_bias=False)


def peak_rss_bytes():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def ensure_h5py():
    """h5py reads our checkpoint on the PyTorch side; install it with pip when missing."""
    try:
        import h5py  # noqa: F401
        return
    except ImportError:
        pass
    print("train_speed.py: installing h5py (pip install h5py) to read the checkpoint", file=sys.stderr)
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "h5py"]).returncode != 0:
        raise SystemExit("train_speed.py needs h5py to read checkpoints/smollm2-135m.h5: pip install h5py")


def load_checkpoint(model, path):
    """Copy our HDF5 checkpoint's tensors into the model one at a time (so loading adds little to peak RSS)."""
    ensure_h5py()
    import h5py
    import numpy as np
    import torch
    params = dict(model.state_dict())
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["config"])
        for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "tie_word_embeddings"]:
            if k in cfg and cfg[k] != SMOLLM2_135M[k]:
                raise SystemExit(f"{path}: config {k} = {cfg[k]}, expected SmolLM2-135M's {SMOLLM2_135M[k]}")
        names = set(f["tensors"].keys())
        expected = set(params) - {"lm_head.weight"}
        if names != expected:
            raise SystemExit(f"{path}: tensors differ from the model's: {sorted(names ^ expected)[:5]}")
        with torch.no_grad():
            for n in sorted(names):
                params[n].copy_(torch.from_numpy(np.asarray(f["tensors"][n][()], dtype=np.float32)))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def pytorch_train_speed(batch=4, window=512, steps=5, warmup=2, threads=2, checkpoint=CKPT, seed=0,
                        precision="fp32"):
    """Train LlamaForCausalLM (SmolLM2-135M config, float32) for warmup + steps steps; returns a dict with
    tokens_per_second over the timed steps, peak_resident_bytes (this process), per-step seconds and losses."""
    import contextlib
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = LlamaConfig(**dict(SMOLLM2_135M, max_position_embeddings=max(8192, window)))
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if checkpoint and os.path.exists(checkpoint):
        load_checkpoint(model, checkpoint)
        weights = os.path.relpath(checkpoint, ROOT)
    else:
        weights = "random init (transformers' default, std 0.02)"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    seconds, losses = [], []
    for s in range(warmup + steps):
        ids = torch.randint(0, config.vocab_size, (batch, window), generator=gen)
        t0 = time.perf_counter()
        with (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = sum(seconds[warmup:])
    return {"tokens_per_second": steps * batch * window / timed, "seconds": timed, "step_seconds": seconds,
            "losses": losses, "loss": losses[-1], "peak_resident_bytes": peak_rss_bytes(), "batch": batch,
            "window": window, "steps": steps, "warmup": warmup, "threads": threads, "weights": weights,
            "parameters": sum(p.numel() for p in params), "attention": model.config._attn_implementation,
            "precision": precision, "torch": torch.__version__, "transformers": transformers.__version__}


def run_ours(a):
    """Our figure, or (None, reason) if the binary or its bench-train subcommand is not available."""
    if not os.path.exists(COMPRESS):
        return None, f"{os.path.relpath(COMPRESS, ROOT)} not found (build it: swift build -c release)"
    cmd = [COMPRESS, "bench-train", "--batch", str(a.batch), "--window", str(a.window), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--precision", a.precision, "--json"]
    if a.checkpoint and os.path.exists(a.checkpoint):
        cmd += ["--checkpoint", a.checkpoint]  # same weights as the PyTorch side (speed does not depend on them)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        err = [l.strip() for l in (p.stderr + p.stdout).splitlines() if l.strip()]
        return None, (f"`compress {' '.join(cmd[1:])}` failed (exit {p.returncode}): {err[0] if err else ''}"
                      " (is bench-train in this build? swift build -c release)")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"`{' '.join(cmd[1:])}` did not print a JSON object as its last line"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    ap.add_argument("--checkpoint", default=CKPT, help="weights for both sides (random init if missing)")
    ap.add_argument("--pytorch-only", action="store_true", help="measure PyTorch only (in this process)")
    ap.add_argument("--json", action="store_true", help="with --pytorch-only: print one JSON object")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: float32, or bf16 products (ours: oneDNN; PyTorch: autocast to bfloat16)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (ours, then PyTorch); medians printed")
    a = ap.parse_args()

    if a.pytorch_only:
        r = pytorch_train_speed(a.batch, a.window, a.steps, a.warmup, a.threads, a.checkpoint, precision=a.precision)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"pytorch   : {r['tokens_per_second']:8.1f} tok/s  peak memory {r['peak_resident_bytes'] / 2**20:.0f} MiB"
                  f"  loss {r['loss']:.4f}  ({r['steps']} steps of {r['batch']}x{r['window']} after {r['warmup']} warm-up;"
                  f" torch {r['torch']}, {r['threads']} threads, weights: {r['weights']})")
        return

    pairs = []
    for _ in range(max(1, a.repeats)):
        ours, why = run_ours(a)
        ref = json.loads(subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--pytorch-only", "--json", "--batch", str(a.batch),
             "--window", str(a.window), "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads",
             str(a.threads), "--checkpoint", a.checkpoint, "--precision", a.precision],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        pairs.append((ours, why, ref))
    ours = pairs[-1][0]
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          f"  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f"  our BLAS core {ours.get('blas_core', '?') if ours else '-'}")
    print(f"precision {a.precision}: ours {ours.get('kernels', '?') if ours else '-'}; pytorch "
          f"{'autocast bfloat16' if a.precision == 'bf16' else 'float32'}")
    print(f"workload: {a.steps} timed training steps (after {a.warmup} warm-up) of batch {a.batch} x window {a.window}"
          f" random tokens, SmolLM2-135M shape; CE + backward + clip 1.0 + AdamW")
    for i, (ours, why, ref) in enumerate(pairs):
        tag = f" (pair {i + 1}/{len(pairs)})" if len(pairs) > 1 else ""
        if ours:
            print(f"compress  : {ours['tokens_per_second']:8.1f} tok/s  loss {ours['loss']:.4f}"
                  f"  peak memory {ours['peak_resident_bytes'] / 2**20:.0f} MiB{tag}")
        else:
            print(f"compress  : not measured: {why}{tag}")
        print(f"pytorch   : {ref['tokens_per_second']:8.1f} tok/s  loss {ref['loss']:.4f}"
              f"  peak memory {ref['peak_resident_bytes'] / 2**20:.0f} MiB  (torch {ref['torch']}, {ref['threads']} threads,"
              f" {ref['attention']} attention, weights: {ref['weights']}){tag}")
        if ours:
            print(f"ratio     : {ours['tokens_per_second'] / ref['tokens_per_second']:.2f}x (compress / pytorch){tag}")
    measured = [(o, r) for o, _, r in pairs if o]
    if len(pairs) > 1 and measured:
        print(f"median    : compress {statistics.median(o['tokens_per_second'] for o, _ in measured):.1f} tok/s, "
              f"pytorch {statistics.median(r['tokens_per_second'] for _, _, r in pairs):.1f} tok/s, ratio "
              f"{statistics.median(o['tokens_per_second'] / r['tokens_per_second'] for o, r in measured):.2f}x "
              f"({len(measured)} pairs)")

if __name__ == "__main__":
    main()
