#!/usr/bin/env python3
"""Writes tiny Hugging Face-style safetensors directories and reference values (run by hand).

    pip install safetensors numpy torch && python3 tools/make_safetensors_fixtures.py

Outputs in Tests/ImportersTests/Fixtures/safetensors/:
  single_f32/  config.json + model.safetensors (F32, with __metadata__)
  bf16/        config.json + model.safetensors (BF16, written through torch)
  f16/         config.json + model.safetensors (F16, incl. subnormals, +-inf, NaN, -0)
  sharded/     config.json + model.safetensors.index.json + two F32 shards
  reference.json  directory -> tensor -> {dtype, shape, ref_offset, count} into reference.bin
  reference.bin   little-endian float32 values
"""
import json
import pathlib

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "Tests" / "ImportersTests" / "Fixtures" / "safetensors"
rng = np.random.default_rng(7)
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
          "num_hidden_layers": 1, "vocab_size": 6, "tie_word_embeddings": True}

reference, refs, offset = {}, [], 0


def record(directory, name, dtype, values):
    global offset
    values = np.asarray(values, dtype=np.float32)
    reference.setdefault(directory, {})[name] = {"dtype": dtype, "shape": list(values.shape),
                                                 "ref_offset": offset, "count": int(values.size)}
    refs.append(values.reshape(-1))
    offset += values.size


def tensors():
    return {"model.embed_tokens.weight": rng.standard_normal((6, 8)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 8)).astype(np.float32),
            "model.norm.weight": rng.standard_normal(8).astype(np.float32),
            "scalar": np.array(3.25, dtype=np.float32)}


def write_dir(name, writer):
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG, indent=1))
    writer(d)


def single_f32(d):
    ts = tensors()
    save_numpy(ts, d / "model.safetensors", metadata={"format": "pt", "note": "fixture"})
    for k, v in ts.items():
        record("single_f32", k, "F32", v)


def bf16(d):
    ts = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors().items()}
    save_torch(ts, d / "model.safetensors", metadata={"format": "pt"})
    for k, v in ts.items():
        record("bf16", k, "BF16", v.to(torch.float32).numpy())


def f16(d):
    ts = {k: v.astype(np.float16) for k, v in tensors().items()}
    special = [0.0, -0.0, 2.0 ** -24, 2.0 ** -14, 65504.0, np.inf, -np.inf, np.nan]
    ts["model.norm.weight"][:] = special
    save_numpy(ts, d / "model.safetensors")
    for k, v in ts.items():
        record("f16", k, "F16", v.astype(np.float32))


def sharded(d):
    ts = tensors()
    names = sorted(ts)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_numpy({k: ts[k] for k in keys}, d / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
        for k in keys:
            record("sharded", k, "F32", ts[k])
    total = sum(v.nbytes for v in ts.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


if __name__ == "__main__":
    for name, fn in [("single_f32", single_f32), ("bf16", bf16), ("f16", f16), ("sharded", sharded)]:
        write_dir(name, fn)
    np.concatenate(refs).astype("<f4").tofile(OUT / "reference.bin")
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1))
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:8d}  {f.relative_to(OUT)}")
