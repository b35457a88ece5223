#!/usr/bin/env python3
"""Reference fixtures for the forward pass: tiny random decoders of each family (Llama, Qwen2, Qwen3, Gemma 3)
written as our HDF5 checkpoint, with logits, loss and windowed perplexity computed by Hugging Face transformers
(PyTorch, float32; LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM with a
Gemma3TextConfig, model_type gemma3_text, eager attention).

Models (MODELS below): tiny-llama (untied), tiny-llama-tied, tiny-qwen2, tiny-qwen3, tiny-gemma3 (tied; sliding
window 5 on layers 0 and 2, full attention on layer 1, rotary base 1e4 on sliding layers and 1e6 on full ones,
query_pre_attn_scalar 24, RMSNorm x/rms*(1+w) with w random around 0, post-attention and post-feed-forward norms,
q/k norms, embeddings scaled by sqrt(hidden_size), gelu_pytorch_tanh). For tiny-gemma3 the script also checks
transformers' logits against an independent float64 implementation written here and that the sliding window
changes them.

Run by hand (CI never runs it; it needs torch, transformers, h5py):
    python3 tools/make_tiny_fixture.py --out Tests/Fixtures                      # every model
    python3 tools/make_tiny_fixture.py --out Tests/Fixtures --models tiny-qwen2 tiny-qwen3
    python3 tools/make_tiny_fixture.py --out Tests/Fixtures --models tiny-gemma3
Each model has its own seed (--seed + 10 * its index in MODELS), so writing a subset gives the same files.

Writes, per model NAME:
    NAME.h5                 the checkpoint in our format (see checkpoints/README.md)
    NAME.reference.json     config, the batch of token ids, loss, windowed-perplexity reference
    NAME.logits.f32         logits of the batch, float32 little-endian, shape (B, T, V)
    NAME.stream.txt         a token stream for the perplexity reference (whitespace-separated ids)
and, for the untied Llama only, the same weights in foreign formats for the import tests:
    NAME-hf/                save_pretrained, safetensors sharded at 200 KB, plus a byte-level tokenizer.json
    NAME-hf-bf16/           save_pretrained in bfloat16 (one file)
    NAME.gguf               GGUF v3, F32, with q/k rows permuted as llama.cpp's converter does
"""
import argparse
import copy
import json
import math
import os

import gguf
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

FORMAT, VERSION = "compress-checkpoint", 1

# Per family: transformers' config and model classes, and config keys fixed for every model of the family.
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(attention_bias=False, mlp_bias=False, hidden_act="silu")),
    # Bias on q, k, v (Qwen2Attention), none on o; no sliding window (our reader refuses it).
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(use_sliding_window=False, hidden_act="silu")),
    # Per-head RMSNorm of q and k (q_norm, k_norm over head_dim); no biases (as every released Qwen3).
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(attention_bias=False, use_sliding_window=False, hidden_act="silu")),
    # Gemma 3 text decoder (model_type gemma3_text): no biases, no softcapping, causal; no pad/BOS/EOS ids (the
    # byte-level tokenizer has none; pad_token_id would also make the embedding drop that row's gradient).
    # Eager attention: the sliding window is applied by the additive mask (checked in check_gemma3).
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM,
               dict(attention_bias=False, hidden_activation="gelu_pytorch_tanh", attn_logit_softcapping=None,
                    final_logit_softcapping=None, use_bidirectional_attention=False, pad_token_id=None,
                    bos_token_id=None, eos_token_id=None, attn_implementation="eager")),
}

MODELS = {
    # Untied LM head, grouped-query attention (2 query heads per KV head), head_dim = hidden / heads.
    "tiny-llama": dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=50000.0,
                       max_position_embeddings=256, tie_word_embeddings=False),
    # Tied embeddings, multi-query attention (1 KV head), head_dim (24) != hidden / heads (16).
    "tiny-llama-tied": dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=24, rms_norm_eps=1e-6,
                            rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True),
    # Qwen2: untied, GQA (2 query heads per KV head), head_dim = hidden / heads = 8; q/k/v biases set to random
    # non-zero values (transformers initialises them to 0, which would hide a missing bias).
    "tiny-qwen2": dict(family="qwen2", vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       max_position_embeddings=256, tie_word_embeddings=False),
    # Qwen3: tied, GQA, explicit head_dim (16) != hidden / heads (8), q_norm/k_norm weights random around 1.
    "tiny-qwen3": dict(family="qwen3", vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, max_position_embeddings=256, tie_word_embeddings=True),
    # Gemma 3: tied, multi-query (1 KV head), head_dim (16) != hidden / heads (8); layers sliding, full, sliding
    # with a window of 5 (token i sees j for i-5 < j <= i: it matters inside the 48-token batch and the 32-token
    # perplexity windows); attention scale 1/sqrt(24) != 1/sqrt(head_dim); rotary base per layer type. All norm
    # weights (input, post-attention, pre- and post-feed-forward, q/k, final) random around 0 (Gemma scales by 1+w).
    "tiny-gemma3": dict(family="gemma3", vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=5,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=24,
                        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                        rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=True),
}


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_tokenizer():
    """A byte-level BPE tokenizer with no merges: token id = byte value."""
    m = bytes_to_unicode()
    return {"model": "gpt2", "pre": "gpt2", "tokens": [m[b] for b in range(256)], "merges": [],
            "add_bos_token": False, "bos_token_id": None, "eos_token_id": None}


def tokenizer_json(tok):
    """A Hugging Face tokenizer.json for the byte-level tokenizer."""
    return {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tok["tokens"])}, "merges": []}}


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's rotary row order for q and k (HF -> GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_foreign_formats(name, model, cfg, out):
    tok = byte_level_tokenizer()
    hf = os.path.join(out, f"{name}-hf")
    model.save_pretrained(hf, safe_serialization=True, max_shard_size="200KB")
    with open(os.path.join(hf, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(tok), f, ensure_ascii=False)
    os.remove(os.path.join(hf, "generation_config.json")) if os.path.exists(os.path.join(hf, "generation_config.json")) else None
    bf16 = os.path.join(out, f"{name}-hf-bf16")
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    copy.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    os.remove(os.path.join(bf16, "generation_config.json")) if os.path.exists(os.path.join(bf16, "generation_config.json")) else None

    w = gguf.GGUFWriter(os.path.join(out, f"{name}.gguf"), arch="llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tok["tokens"])
    w.add_token_types([1] * len(tok["tokens"]))
    for pname, p in model.state_dict().items():
        a = p.detach().numpy().astype(np.float32)
        if pname == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif pname == "model.norm.weight":
            gname = "output_norm.weight"
        elif pname == "lm_head.weight":
            gname = "output.weight"
        else:
            parts = pname.split(".")  # model.layers.N.<sub>.<proj>.weight
            sub = ".".join(parts[3:-1])
            gname = f"blk.{parts[2]}.{GGUF_NAMES[sub]}.weight"
            if sub == "self_attn.q_proj":
                a = permute(a, cfg["num_attention_heads"])
            elif sub == "self_attn.k_proj":
                a = permute(a, cfg["num_key_value_heads"])
        w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gemma3_reference_logits(model, ids, sliding=True):
    """Gemma 3 written out independently of transformers' code, in float64, from the model's parameters and
    config: embeddings * sqrt(C); per layer h = x + post_attn_norm(attn(input_norm(x))),
    x' = h + post_ff_norm(mlp(pre_ff_norm(h))); RMSNorm x / sqrt(mean x^2 + eps) * (1 + w); q/k normed per head
    before the rotary embedding (half-split, base per layer type); scores / sqrt(query_pre_attn_scalar); sliding
    layers let token i see j for i - window < j <= i; final norm, tied LM head."""
    c = model.config
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, KV, D, C = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
    Bn, T = ids.shape
    eps = c.rms_norm_eps

    def norm(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)

    def rot(x, cos, sin):  # x (B, T, heads, D)
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    pos = torch.arange(T, dtype=torch.float64)
    i, j = pos[:, None], pos[None, :]
    x = p["model.embed_tokens.weight"][ids] * math.sqrt(C)
    for l, kind in enumerate(c.layer_types):
        q_ = f"model.layers.{l}."
        theta = c.rope_parameters[kind]["rope_theta"]
        ang = pos[:, None] * theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        cos, sin = torch.cat((ang.cos(), ang.cos()), -1)[:, None], torch.cat((ang.sin(), ang.sin()), -1)[:, None]
        allowed = j <= i
        if kind == "sliding_attention" and sliding:
            allowed = allowed & (i - j < c.sliding_window)
        h = norm(x, p[q_ + "input_layernorm.weight"])
        q = (h @ p[q_ + "self_attn.q_proj.weight"].T).view(Bn, T, H, D)
        k = (h @ p[q_ + "self_attn.k_proj.weight"].T).view(Bn, T, KV, D)
        v = (h @ p[q_ + "self_attn.v_proj.weight"].T).view(Bn, T, KV, D)
        q = rot(norm(q, p[q_ + "self_attn.q_norm.weight"]), cos, sin)
        k = rot(norm(k, p[q_ + "self_attn.k_norm.weight"]), cos, sin)
        g = torch.arange(H) // (H // KV)
        s = torch.einsum("bthd,bshd->bhts", q, k[:, :, g]) / math.sqrt(c.query_pre_attn_scalar)
        a = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        o = torch.einsum("bhts,bshd->bthd", a, v[:, :, g]).reshape(Bn, T, H * D)
        x = x + norm(o @ p[q_ + "self_attn.o_proj.weight"].T, p[q_ + "post_attention_layernorm.weight"])
        h = norm(x, p[q_ + "pre_feedforward_layernorm.weight"])
        m = F.gelu(h @ p[q_ + "mlp.gate_proj.weight"].T, approximate="tanh") * (h @ p[q_ + "mlp.up_proj.weight"].T)
        x = x + norm(m @ p[q_ + "mlp.down_proj.weight"].T, p[q_ + "post_feedforward_layernorm.weight"])
    return norm(x, p["model.norm.weight"]) @ p["model.embed_tokens.weight"].T


def check_gemma3(model, batch, logits):
    """transformers' float32 logits against the float64 implementation above; the sliding window matters (the
    same weights with the window off, in transformers and here, give different logits); SDPA agrees."""
    ref = gemma3_reference_logits(model, batch)
    err = (torch.from_numpy(logits).double() - ref).abs().max().item()
    assert err < 1e-4, f"transformers vs the float64 reference: max |diff| {err:.2e}"
    wide = copy.deepcopy(model)
    wide.config.sliding_window = 1000
    for layer in wide.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 1000
    with torch.no_grad():
        z_wide = wide(batch).logits.double()
    ref_wide = gemma3_reference_logits(model, batch, sliding=False)
    off = (z_wide - ref_wide).abs().max().item()
    diff = (z_wide - ref).abs().max().item()
    assert off < 1e-4 and diff > 0.1, (off, diff)
    sdpa = copy.deepcopy(model)
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.config._attn_implementation == "sdpa" and model.config._attn_implementation == "eager"
    with torch.no_grad():
        z_sdpa = sdpa(batch).logits.double()
    sd = (z_sdpa - torch.from_numpy(logits).double()).abs().max().item()
    assert sd < 1e-4, sd
    print(f"  gemma3 check: max |HF - float64 reference| {err:.2e}; window off: max |HF - reference| {off:.2e}, "
          f"max |logits change| {diff:.3f}; max |SDPA - eager| {sd:.2e}")


def make(name, cfg, out, seed):
    torch.manual_seed(seed)
    cfg = dict(cfg)
    family = cfg.pop("family", "llama")
    config_class, model_class, fixed = FAMILIES[family]
    config = config_class(**cfg, **fixed)
    model = model_class(config).float().eval()
    # Weights large enough that logits are far from uniform (HF's std 0.02 init would make a weak test).
    # Norm weights (1-D, incl. Qwen3's q_norm/k_norm) around 1; biases (Qwen2's q/k/v) around 0 with std 0.5.
    # Gemma's norms multiply by 1 + w: its norm weights (all 1-D) are around 0, std 0.3.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif p.ndim == 1 and family == "gemma3":
                p.copy_(0.3 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
    g = torch.Generator().manual_seed(seed + 1)
    batch = torch.randint(0, cfg["vocab_size"], (2, 48), generator=g)
    with torch.no_grad():
        res = model(batch, labels=batch)
    logits = res.logits.float().numpy().astype("<f4")
    logits.tofile(os.path.join(out, f"{name}.logits.f32"))
    if family == "gemma3":
        check_gemma3(model, batch, logits)

    # Perplexity reference with the pinned protocol: windows of W, no BOS, each window on its own,
    # HF loss (mean over W-1 predictions) weighted by W-1.
    W = 32
    stream = torch.randint(0, cfg["vocab_size"], (5 * W + 7,), generator=g)
    total = 0.0
    windows = len(stream) // W
    with torch.no_grad():
        for w in range(windows):
            ids = stream[w * W:(w + 1) * W].unsqueeze(0)
            total += model(ids, labels=ids).loss.double().item() * (W - 1)
    predicted = windows * (W - 1)
    with open(os.path.join(out, f"{name}.stream.txt"), "w") as f:
        f.write(" ".join(map(str, stream.tolist())) + "\n")

    hf_config = json.loads(config.to_json_string())
    assert hf_config["model_type"] == config_class.model_type, hf_config["model_type"]
    for k in ["transformers_version", "torch_dtype", "dtype", "_name_or_path"]:
        hf_config.pop(k, None)
    with h5py.File(os.path.join(out, f"{name}.h5"), "w", libver=("v108", "v110")) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = np.int64(VERSION)
        f.attrs["config"] = json.dumps(hf_config, sort_keys=True)
        f.attrs["history"] = json.dumps([{"kind": "create", "tool": "tools/make_tiny_fixture.py", "seed": seed,
                                          "note": "random weights, transformers " + __import__("transformers").__version__}])
        t = f.create_group("tensors")
        for pname, p in model.state_dict().items():
            if pname == "lm_head.weight" and cfg["tie_word_embeddings"]:
                continue
            t.create_dataset(pname, data=p.detach().numpy().astype("<f4"))
        tok = json.dumps(byte_level_tokenizer(), sort_keys=True).encode("utf-8")
        f.create_dataset("tokenizer", data=np.frombuffer(tok, dtype=np.uint8))

    if family == "llama" and not cfg["tie_word_embeddings"]:
        write_foreign_formats(name, model, cfg, out)

    ref = {"config": hf_config, "batch": batch.tolist(), "loss": res.loss.item(),
           "logits_shape": list(logits.shape),
           "perplexity": {"window": W, "stream_tokens": len(stream), "windows": windows, "predicted_tokens": predicted,
                          "total_nll": total, "ppl": math.exp(total / predicted)},
           "produced_by": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"}
    with open(os.path.join(out, f"{name}.reference.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
    print(f"{name}: loss {res.loss.item():.6f}, ppl {ref['perplexity']['ppl']:.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="Tests/Fixtures")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                    help="models to write (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, cfg) in enumerate(MODELS.items()):
        if name in args.models:
            make(name, cfg, args.out, args.seed + 10 * i)


if __name__ == "__main__":
    main()
