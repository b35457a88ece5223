#!/usr/bin/env python3
"""One-off check behind SmolLM2Tests (run by hand; needs transformers, torch, gguf).

    python3 tools/smollm2_reference.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

1. Loads the GGUF with transformers' own GGUF loader and prints layer-0 q_proj/k_proj values that
   SmolLM2Tests compares against (first elements, float64 sums, a few rows that the permutation moves).
2. Confirms transformers' tensors equal gguf-py dequantization followed by the inverse of llama.cpp's
   permute, and differ from plain dequantization.
3. Shows the un-permutation is needed: the language-model loss on a short English text with the
   HF-layout q/k versus the same model with q/k left in GGUF (permuted) order.
"""
import pathlib
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

path = pathlib.Path(sys.argv[1]).resolve()
HEADS, KV_HEADS = 9, 3


def permute(w, n_head):  # llama.cpp convert_hf_to_gguf: HF -> GGUF
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):  # GGUF -> HF
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
state = model.state_dict()
reader = GGUFReader(path)
raw = {t.name: t for t in reader.tensors}

for hf, gg, heads in [("q_proj", "attn_q", HEADS), ("k_proj", "attn_k", KV_HEADS)]:
    w = state[f"model.layers.0.self_attn.{hf}.weight"].numpy()
    t = raw[f"blk.0.{gg}.weight"]
    plain = dequantize(t.data, t.tensor_type).reshape(w.shape)
    print(f"{hf}: shape {w.shape}")
    print(f"  first 8     {w.reshape(-1)[:8].tolist()}")
    print(f"  row 1 [:4]  {w[1, :4].tolist()}")
    print(f"  row 32 [:4] {w[32, :4].tolist()}")
    print(f"  sum {w.astype(np.float64).sum()!r}  abs sum {np.abs(w.astype(np.float64)).sum()!r}")
    print(f"  == unpermute(dequantize(gguf)): {np.array_equal(w, unpermute(plain, heads))}; "
          f"== dequantize(gguf): {np.array_equal(w, plain)}; permute(hf) == gguf: {np.array_equal(permute(w, heads), plain)}")

text = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
        "capital of Germany. Water boils at one hundred degrees Celsius at sea level.")
ids = tokenizer(text, return_tensors="pt").input_ids


def loss():
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


print(f"loss with HF-order q/k (un-permuted, transformers' load): {loss():.4f}")
with torch.no_grad():
    for layer in model.model.layers:
        for proj, heads in [(layer.self_attn.q_proj, HEADS), (layer.self_attn.k_proj, KV_HEADS)]:
            proj.weight.copy_(torch.from_numpy(permute(proj.weight.numpy(), heads)))
print(f"loss with q/k left in GGUF order (no un-permutation):     {loss():.4f}")
