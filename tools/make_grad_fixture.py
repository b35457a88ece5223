#!/usr/bin/env python3
"""Reference fixtures for the backward pass, distillation losses and AdamW: gradients computed by PyTorch
(transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM / Gemma3ForCausalLM, float32, SDPA
attention, one thread) on the tiny fixture checkpoints.

Run by hand (CI never runs it; it needs torch, transformers, h5py), after tools/make_tiny_fixture.py:
    python3 tools/make_grad_fixture.py --out Tests/Fixtures                        # every family
    python3 tools/make_grad_fixture.py --out Tests/Fixtures --families qwen2 qwen3
    python3 tools/make_grad_fixture.py --out Tests/Fixtures --families gemma3

Per family (FAMILIES below: the case (a) model, the case (b)/(c) student and teacher), reads their NAME.h5 from
--out and writes:
    A.grad.json / .f32          case (a): CE loss of model A alone, gradient of every parameter (incl. Qwen2's
                                q/k/v biases, Qwen3's and Gemma 3's q/k norms, Gemma 3's four norms per block)
    S.distill.json / .f32       case (b): distillation loss of student S against teacher T, gradients of every
                                student parameter and of the map; case (c) under "adamw": 6 AdamW steps of that loss
    llama: A = tiny-llama-tied, S = tiny-llama, T = tiny-llama-tied
    qwen2: A = tiny-qwen2,      S = tiny-qwen2, T = tiny-qwen3
    qwen3: A = tiny-qwen3,      S = tiny-qwen3, T = tiny-qwen2
    gemma3: A = tiny-gemma3,    S = tiny-gemma3, T = tiny-qwen2   (the sliding window, 5, matters at W = 16;
                                checked: SDPA equals eager attention, and the window off changes the logits)
Each family draws its finite-difference entries from its own generator, so writing a subset gives the same files.
The .f32 files are float32 little-endian, row-major, the tensors of the JSON's "tensors" list concatenated
(offsets and sizes in floats). Outputs are deterministic (same bytes on every run on the same stack).

Definitions (the Swift side implements the same ones). ids (B, W); student logits zS, teacher logits zT (B, W, V):
    L_kl  = tau^2 / (B*W) * sum_{b,t} KL(softmax(zT[b,t]/tau) || softmax(zS[b,t]/tau))   (all W positions)
    L_ce  = mean_{b, t<W-1} -log softmax(zS[b,t])[ids[b,t+1]]                            (= HF loss, labels=ids)
    L_int = mean over pairs (s, t) of L_pair; hS = output of student decoder layer s (residual stream after the
            block, before the final norm), hT = same for teacher layer t (no grad); mapped = hS @ M^T with M
            (C_T, C_S) initialised to the identity (M[i][i] = 1 for i < min(C_T, C_S));
            cosine: L_pair = mean_{b,t} (1 - <mapped, hT> / (|mapped| |hT|))    (no epsilon)
            mse:    L_pair = mean_{b,t,c} (mapped - hT)^2
    L     = w_kl L_kl + w_ce L_ce + w_int L_int
"loss_f64" etc. are the same losses with the float32 weights converted to float64 and the whole forward in
float64 (transformers computes RMSNorm and RoPE in float32 even for a float64 model; this script patches those
two so the float64 figures are genuinely float64: Gemma 3's (1 + w) RMSNorm and per-layer-type rotary embedding
too, and Gemma 3's embedding scale sqrt(hidden_size), a float32 buffer in transformers, is set in float64). They
show the float32 noise level of the figures.
"""
import argparse
import copy
import json
import math
import os
import sys
import types

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

COMMAND = "python3 tools/make_grad_fixture.py --out Tests/Fixtures"
PRODUCED_BY = f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}"
B, W, V_IDS = 2, 16, 256

# Case (b)/(c) settings.
TAU, W_KL, W_CE, W_INT = 2.0, 1.0, 0.5, 0.7
PAIRS, INT_KIND = [(0, 1)], "cosine"
ADAMW = dict(lr=3e-3, min_lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, warmup=2, total=6, clip=1.0, seed=9)

# Per family: case (a) model, case (b)/(c) student and teacher, seed of the finite-difference entry generator.
FAMILIES = {
    "llama": dict(ce="tiny-llama-tied", student="tiny-llama", teacher="tiny-llama-tied", fd_seed=0),
    "qwen2": dict(ce="tiny-qwen2", student="tiny-qwen2", teacher="tiny-qwen3", fd_seed=2),
    "qwen3": dict(ce="tiny-qwen3", student="tiny-qwen3", teacher="tiny-qwen2", fd_seed=3),
    "gemma3": dict(ce="tiny-gemma3", student="tiny-gemma3", teacher="tiny-qwen2", fd_seed=4),
}
# transformers' classes by config.json model_type.
CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
           "qwen3": (Qwen3Config, Qwen3ForCausalLM), "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM)}


# ---------------------------------------------------------------------------------------------------- models

def _rms_forward_exact(self, x):
    """LlamaRMSNorm (Qwen2RMSNorm and Qwen3RMSNorm are the same code) in the input's dtype (HF upcasts to
    float32, i.e. downcasts a float64 model)."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


def _rope_forward_exact(self, x, position_ids):
    """Default RoPE with inverse frequencies and angles in float64 (HF computes them in float32)."""
    cfg = self.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _gemma3_rms_forward_exact(self, x):
    """Gemma3RMSNorm, x / rms(x) * (1 + w), in the input's dtype (HF computes it in float32 and casts back)."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return (x * torch.rsqrt(variance + self.eps)) * (1.0 + self.weight)


def _gemma3_rope_forward_exact(self, x, position_ids, layer_type):
    """Gemma3RotaryEmbedding (one module, called once per layer type with that type's base) with inverse
    frequencies and angles in float64; default rotary only (attention scaling 1)."""
    cfg = self.config
    params = cfg.rope_parameters[layer_type]
    assert params["rope_type"] == "default" and getattr(self, f"{layer_type}_attention_scaling") == 1.0, params
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def load_model(path):
    """The family's *ForCausalLM (by the config's model_type; float32, SDPA attention) from one of our HDF5
    checkpoints; tied if the config says so."""
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["config"])
        tensors = {k: torch.from_numpy(np.asarray(f["tensors"][k][()], dtype=np.float32)) for k in f["tensors"]}
    config_class, model_class = CLASSES[cfg.get("model_type", "llama")]
    config = config_class(**cfg)
    model = model_class._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = bool(cfg.get("tie_word_embeddings"))
    assert not unexpected, unexpected
    assert missing == (["lm_head.weight"] if tied else []), missing
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.float().eval(), cfg


def to_f64(model):
    m = copy.deepcopy(model).double()
    for mod in m.modules():
        if type(mod).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"):
            mod.forward = types.MethodType(_rms_forward_exact, mod)
        elif type(mod).__name__ in ("LlamaRotaryEmbedding", "Qwen2RotaryEmbedding", "Qwen3RotaryEmbedding"):
            mod.forward = types.MethodType(_rope_forward_exact, mod)
        elif type(mod).__name__ == "Gemma3RMSNorm":
            mod.forward = types.MethodType(_gemma3_rms_forward_exact, mod)
        elif type(mod).__name__ == "Gemma3RotaryEmbedding":
            mod.forward = types.MethodType(_gemma3_rope_forward_exact, mod)
        elif type(mod).__name__ == "Gemma3TextScaledWordEmbedding":  # buffer float32(sqrt(C)) -> float64 sqrt(C)
            mod.embed_scale.fill_(math.sqrt(mod.embedding_dim))
        else:
            assert "RMSNorm" not in type(mod).__name__ and "Rotary" not in type(mod).__name__, type(mod).__name__
    return m


def canonical_names(cfg):
    """Every parameter in a fixed order: per layer the attention norm, q/k/v/o (each followed by its bias if the
    family has one: Qwen2 q/k/v, Qwen3 / Gemma 3 with attention_bias q/k/v/o), Qwen3's and Gemma 3's q_norm and
    k_norm, the MLP norm and the MLP projections. Gemma 3 (in the order of its forward): input_layernorm, q/k/v/o,
    q_norm, k_norm, post_attention_layernorm, pre_feedforward_layernorm, gate/up/down,
    post_feedforward_layernorm."""
    family = cfg.get("model_type", "llama")
    biased = {"qwen2": ["q_proj", "k_proj", "v_proj"],
              "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"] if cfg.get("attention_bias") else [],
              "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"] if cfg.get("attention_bias") else []
              }.get(family, [])
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names.append(p + "input_layernorm.weight")
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            names.append(p + f"self_attn.{proj}.weight")
            if proj in biased:
                names.append(p + f"self_attn.{proj}.bias")
        if family in ("qwen3", "gemma3_text"):
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        if family == "gemma3_text":
            names += [p + s + ".weight" for s in ["post_attention_layernorm", "pre_feedforward_layernorm",
                                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                                                  "post_feedforward_layernorm"]]
            continue
        names += [p + s + ".weight" for s in ["post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]
    names.append("model.norm.weight")
    if not cfg.get("tie_word_embeddings"):
        names.append("lm_head.weight")
    return names


def canonical_params(model, cfg):
    params = dict(model.named_parameters())  # the tied lm_head.weight is deduplicated away here
    names = canonical_names(cfg)
    assert sorted(names) == sorted(params), (sorted(names), sorted(params))
    return names, [params[n] for n in names]


def identity_map(c_t, c_s, dtype):
    m = torch.zeros(c_t, c_s, dtype=dtype)
    n = min(c_t, c_s)
    m[torch.arange(n), torch.arange(n)] = 1
    return m.requires_grad_(True)


# ---------------------------------------------------------------------------------------------------- losses

def forward(model, ids, layers=()):
    """Logits and the outputs of the given decoder layers (forward hooks; HF's output_hidden_states would give
    the final-normed state as its last entry)."""
    store = {}
    hooks = [model.model.layers[i].register_forward_hook(
        lambda mod, inp, out, i=i: store.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in layers]
    try:
        logits = model(input_ids=ids, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, store


def ce_loss(z, ids):
    V = z.shape[-1]
    return F.cross_entropy(z[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def kl_loss(zs, zt, tau):
    lq = F.log_softmax(zs / tau, dim=-1)
    lp = F.log_softmax(zt / tau, dim=-1)
    return tau * tau * (lp.exp() * (lp - lq)).sum(-1).mean()


def pair_loss(hs, ht, m, kind):
    mapped = hs @ m.t()
    if kind == "cosine":
        cos = (mapped * ht).sum(-1) / (mapped.norm(dim=-1) * ht.norm(dim=-1))
        return (1 - cos).mean()
    if kind == "mse":
        return (mapped - ht).pow(2).mean()
    raise ValueError(kind)


def distill_loss(student, teacher, maps, ids):
    with torch.no_grad():
        zt, ht = forward(teacher, ids, [t for _, t in PAIRS])
    zs, hs = forward(student, ids, [s for s, _ in PAIRS])
    l_kl = kl_loss(zs, zt, TAU)
    l_ce = ce_loss(zs, ids)
    l_int = torch.stack([pair_loss(hs[s], ht[t], m, INT_KIND) for (s, t), m in zip(PAIRS, maps)]).mean()
    total = W_KL * l_kl + W_CE * l_ce + W_INT * l_int
    return total, {"loss_kl": l_kl, "loss_ce": l_ce, "loss_int": l_int}


# ---------------------------------------------------------------------------------------------------- checks

def check_definitions(student, teacher, maps, ids):
    """Cross-check the hand-written losses and the hooks against independent torch/HF formulations."""
    with torch.no_grad():
        n = student.config.num_hidden_layers
        zs, hk = forward(student, ids, range(n))
        hs = student(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        for i in range(n - 1):  # HF's hidden_states[i + 1] is layer i's output ...
            assert torch.equal(hk[i], hs[i + 1])
        # ... except the last entry, which has the final norm applied: hooks are needed.
        assert torch.allclose(student.model.norm(hk[n - 1]), hs[n], atol=1e-6) and not torch.allclose(hk[n - 1], hs[n])
        zt, ht = forward(teacher, ids, [t for _, t in PAIRS])
        ref_kl = TAU ** 2 * F.kl_div(F.log_softmax(zs / TAU, -1), F.log_softmax(zt / TAU, -1), log_target=True,
                                     reduction="sum") / (ids.numel())
        assert abs(kl_loss(zs, zt, TAU).item() - ref_kl.item()) < 1e-5 * ref_kl.item()
        ref_ce = student(input_ids=ids, labels=ids, use_cache=False).loss
        assert abs(ce_loss(zs, ids).item() - ref_ce.item()) < 1e-6
        for (s, t), m in zip(PAIRS, maps):
            ref = (1 - F.cosine_similarity(hk[s] @ m.t(), ht[t], dim=-1)).mean()
            assert abs(pair_loss(hk[s], ht[t], m, "cosine").item() - ref.item()) < 1e-6
            ref = F.mse_loss(hk[s] @ m.t(), ht[t])
            assert abs(pair_loss(hk[s], ht[t], m, "mse").item() - ref.item()) < 1e-6 * ref.item()


def check_sliding(model, ids):
    """Gemma 3: SDPA (used here) applies the sliding window as eager attention does (the same logits), and the
    window matters on this batch (switched off, the logits change)."""
    with torch.no_grad():
        z = model(input_ids=ids, use_cache=False).logits
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        assert model.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
        d_eager = (eager(input_ids=ids, use_cache=False).logits - z).abs().max().item()
        wide = copy.deepcopy(model)
        wide.config.sliding_window = 1000
        for layer in wide.model.layers:
            if layer.self_attn.sliding_window is not None:
                layer.self_attn.sliding_window = 1000
        d_wide = (wide(input_ids=ids, use_cache=False).logits - z).abs().max().item()
    assert d_eager < 1e-5 and d_wide > 0.1, (d_eager, d_wide)
    print(f"  sliding window: max |SDPA - eager| {d_eager:.2e}; window off changes logits by up to {d_wide:.3f}")


def finite_difference_check(loss_fn, named, rng, per_tensor=2, h=1e-4):
    """Central differences in float64 against autograd for a few entries of every tensor (2 random entries
    plus the entry with the largest |gradient|). Returns the max relative error and the number of entries."""
    for _, p in named:
        p.grad = None
    loss_fn().backward()
    worst, count = 0.0, 0
    for name, p in named:
        g = p.grad.detach().clone()
        flat_g = g.reshape(-1)
        gmax = flat_g.abs().max().item()
        idx = [int(flat_g.abs().argmax())] + [int(i) for i in rng.choice(flat_g.numel(), per_tensor, replace=False)]
        if name == "model.embed_tokens.weight":  # random rows are mostly tokens absent from the batch
            nz = torch.nonzero(flat_g).reshape(-1)
            idx = idx[:1] + [int(nz[i]) for i in rng.choice(len(nz), per_tensor, replace=False)]
        for i in idx:
            with torch.no_grad():
                flat = p.data.reshape(-1)
                old = flat[i].item()
                flat[i] = old + h
                lp = loss_fn().item()
                flat[i] = old - h
                lm = loss_fn().item()
                flat[i] = old
            fd = (lp - lm) / (2 * h)
            an = flat_g[i].item()
            rel = abs(fd - an) / max(abs(fd), abs(an), 1e-3 * gmax, 1e-12)
            worst = max(worst, rel)
            count += 1
    return worst, count


def grad_noise(grads32, grads64):
    """Per tensor: max |g32 - g64| / max |g64| (how far float32 gradients are from float64 ones)."""
    return max((a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30) for a, b in zip(grads32, grads64))


# ---------------------------------------------------------------------------------------------------- output

def write_case(out, stem, entries, meta):
    """entries: list of (name, tensor) written in order as float32 LE; meta: JSON fields."""
    tensors, offset, chunks = [], 0, []
    for name, t in entries:
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        tensors.append({"name": name, "shape": list(a.shape), "offset": offset, "count": int(a.size)})
        offset += int(a.size)
        chunks.append(a.reshape(-1))
    binary = f"{stem}.f32"
    np.concatenate(chunks).astype("<f4").tofile(os.path.join(out, binary))
    meta = dict(meta, binary=binary, dtype="float32 little-endian, row-major", tensors=tensors, total_floats=offset,
                produced_by=PRODUCED_BY, command=COMMAND)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {stem}.json, {binary} ({offset * 4 / 1024:.0f} KiB)")


def lr_at(s):
    a = ADAMW
    if s < a["warmup"]:
        return a["lr"] * (s + 1) / a["warmup"]
    p = (s - a["warmup"]) / max(1, a["total"] - a["warmup"])
    return a["min_lr"] + 0.5 * (a["lr"] - a["min_lr"]) * (1 + math.cos(math.pi * p))


def train(student, teacher, maps, student_params, batches, eval_ids):
    """Case (c): AdamW steps (torch.optim.AdamW) with warm-up + cosine LR and global-norm clipping."""
    a = ADAMW
    params = student_params + maps
    decay = [p for p in params if p.ndim == 2]
    no_decay = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a["lr"], betas=a["betas"], eps=a["eps"], foreach=False)
    steps = []
    for s, ids in enumerate(batches):
        lr = lr_at(s)
        opt.zero_grad(set_to_none=True)
        loss, parts = distill_loss(student, teacher, maps, ids)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, a["clip"], foreach=False)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        steps.append({"step": s, "lr": lr, "loss": loss.item(), "grad_norm": norm.item(),
                      **{k: v.item() for k, v in parts.items()}})
    with torch.no_grad():
        final, parts = distill_loss(student, teacher, maps, eval_ids)
    return steps, {"final_loss": final.item(), **{"final_" + k: v.item() for k, v in parts.items()}}


# ---------------------------------------------------------------------------------------------------- cases

def case_a(out, rng, name):
    model, cfg = load_model(os.path.join(out, f"{name}.h5"))
    names, params = canonical_params(model, cfg)
    ids = torch.randint(0, V_IDS, (B, W), generator=torch.Generator().manual_seed(7))
    logits, _ = forward(model, ids)
    loss = ce_loss(logits, ids)
    hf_loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    assert abs(loss.item() - hf_loss.item()) < 1e-6, (loss.item(), hf_loss.item())
    if cfg.get("sliding_window") and "sliding_attention" in cfg.get("layer_types", []):
        check_sliding(model, ids)
    loss.backward()
    grads = [p.grad.detach().clone() for p in params]

    m64 = to_f64(model)
    names64, params64 = canonical_params(m64, cfg)
    loss_fn = lambda: ce_loss(forward(m64, ids)[0], ids)  # noqa: E731
    loss64 = loss_fn()
    loss64.backward()
    noise = grad_noise(grads, [p.grad.detach().clone() for p in params64])
    worst, n = finite_difference_check(loss_fn, list(zip(names64, params64)), rng)
    print(f"case (a) {name} CE: loss {loss.item():.9f} (f64 {loss64.item():.12f}; HF loss {hf_loss.item():.9f})")
    print(f"  float32 vs float64 gradients: max |diff| / max |g64| per tensor = {noise:.2e}")
    print(f"  finite differences (float64, {n} entries): max relative error {worst:.2e}")
    write_case(out, f"{name}.grad", list(zip(names, grads)), {
        "case": "a: CE only (w_kl = 0, no teacher); gradients of every parameter (tied: embedding gradient includes "
                "the LM-head contribution)",
        "model": f"{name}.h5", "batch": ids.tolist(), "batch_seed": 7, "B": B, "W": W,
        "loss": loss.item(), "loss_f64": loss64.item(), "hf_loss": hf_loss.item(),
        "grad_f32_vs_f64_max_rel": noise, "finite_difference_max_rel_error": worst})
    return loss.item(), worst


def case_bc(out, rng, student_name, teacher_name):
    student_path = os.path.join(out, f"{student_name}.h5")
    student, scfg = load_model(student_path)
    teacher, tcfg = load_model(os.path.join(out, f"{teacher_name}.h5"))
    for p in teacher.parameters():
        p.requires_grad_(False)
    c_s, c_t = scfg["hidden_size"], tcfg["hidden_size"]
    names, params = canonical_params(student, scfg)
    maps = [identity_map(c_t, c_s, torch.float32) for _ in PAIRS]
    map_names = [f"map.{k}" for k in range(len(PAIRS))]
    ids = torch.randint(0, V_IDS, (B, W), generator=torch.Generator().manual_seed(8))

    check_definitions(student, teacher, maps, ids)

    loss, parts = distill_loss(student, teacher, maps, ids)
    loss.backward()
    grads = [p.grad.detach().clone() for p in params + maps]

    s64, t64 = to_f64(student), to_f64(teacher)
    _, params64 = canonical_params(s64, scfg)
    maps64 = [m.detach().double().requires_grad_(True) for m in maps]
    loss_fn = lambda: distill_loss(s64, t64, maps64, ids)[0]  # noqa: E731
    loss64, parts64 = distill_loss(s64, t64, maps64, ids)
    loss64.backward()
    noise = grad_noise(grads, [p.grad.detach().clone() for p in params64 + maps64])
    worst, n = finite_difference_check(loss_fn, list(zip(names + map_names, params64 + maps64)), rng)
    print(f"case (b) distill {student_name} <- {teacher_name}: L {loss.item():.9f} = {W_KL}*KL {parts['loss_kl'].item():.9f} + {W_CE}*CE "
          f"{parts['loss_ce'].item():.9f} + {W_INT}*INT {parts['loss_int'].item():.9f}")
    print(f"  float64: L {loss64.item():.12f}, KL {parts64['loss_kl'].item():.12f}, CE {parts64['loss_ce'].item():.12f}, "
          f"INT {parts64['loss_int'].item():.12f}")
    print(f"  float32 vs float64 gradients: max |diff| / max |g64| per tensor = {noise:.2e}")
    print(f"  finite differences (float64, {n} entries): max relative error {worst:.2e}")

    # Case (c): from the same initial weights (fresh copies), float32 and float64.
    gen = torch.Generator().manual_seed(ADAMW["seed"])
    batches = [torch.randint(0, V_IDS, (B, W), generator=gen) for _ in range(ADAMW["total"])]
    runs = {}
    for tag, (st, te) in {"f32": (load_model(student_path)[0], teacher),
                          "f64": (to_f64(load_model(student_path)[0]), t64)}.items():
        dtype = torch.float64 if tag == "f64" else torch.float32
        mp = [identity_map(c_t, c_s, dtype) for _ in PAIRS]
        runs[tag] = train(st, te, mp, canonical_params(st, scfg)[1], batches, ids)
    steps = runs["f32"][0]
    for s, s64 in zip(steps, runs["f64"][0]):
        s["batch"] = batches[s["step"]].tolist()
        s.update({k + "_f64": s64[k] for k in ["loss", "grad_norm", "loss_kl", "loss_ce", "loss_int"]})
        print(f"  adamw step {s['step']}: lr {s['lr']:.6g}  loss {s['loss']:.9f} (f64 {s['loss_f64']:.9f})  "
              f"grad norm {s['grad_norm']:.6f} (f64 {s['grad_norm_f64']:.6f})")
    final = dict(runs["f32"][1], **{k + "_f64": v for k, v in runs["f64"][1].items()})
    print(f"  final loss on the case (b) batch: {final['final_loss']:.9f} (f64 {final['final_loss_f64']:.9f})")
    adamw = {
        "optimizer": "torch.optim.AdamW (foreach=False): p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; "
                     "p -= lr/(1-b1^k) * m / (sqrt(v)/sqrt(1-b2^k) + eps), k = step + 1",
        "lr": ADAMW["lr"], "min_lr": ADAMW["min_lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
        "weight_decay": ADAMW["weight_decay"], "weight_decay_applies_to": "2-D tensors (incl. maps); 1-D (norms, biases) get 0",
        "warmup": ADAMW["warmup"], "total_steps": ADAMW["total"],
        "schedule": "s < warmup: lr*(s+1)/warmup; else min_lr + 0.5*(lr-min_lr)*(1+cos(pi*(s-warmup)/max(1,total-warmup)))",
        "clip_grad_norm": ADAMW["clip"],
        "clipping": "torch.nn.utils.clip_grad_norm_ over student params + maps: norm = global L2; "
                    "if max/(norm+1e-6) < 1, grads *= max/(norm+1e-6)",
        "batch_seed": ADAMW["seed"], "teacher": "frozen", "trainable": "student parameters and maps",
        "steps": steps, **final,
        "final_loss_batch": "the case (b) batch (seed 8), evaluated after the last update"}

    entries = list(zip(names + map_names, grads))
    write_case(out, f"{student_name}.distill", entries, {
        "case": "b: distillation gradients of every student parameter, then of the map(s); c under 'adamw'",
        "student": f"{student_name}.h5", "teacher": f"{teacher_name}.h5", "batch": ids.tolist(), "batch_seed": 8,
        "B": B, "W": W, "tau": TAU, "w_kl": W_KL, "w_ce": W_CE, "w_int": W_INT,
        "intermediate": {"pairs": [list(p) for p in PAIRS], "kind": INT_KIND,
                         "maps": [{"name": n, "shape": [c_t, c_s], "init": "identity"} for n in map_names],
                         "hidden_state": "output of the decoder layer (residual stream, before the final norm)"},
        "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
        "loss_f64": loss64.item(), **{k + "_f64": v.item() for k, v in parts64.items()},
        "grad_f32_vs_f64_max_rel": noise, "finite_difference_max_rel_error": worst, "adamw": adamw})
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="Tests/Fixtures")
    ap.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES),
                    help="families whose fixtures to write (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    worst = 0.0
    for family in args.families:
        f = FAMILIES[family]
        torch.manual_seed(0)
        rng = np.random.default_rng(f["fd_seed"])
        _, wa = case_a(args.out, rng, f["ce"])
        wb = case_bc(args.out, rng, f["student"], f["teacher"])
        worst = max(worst, wa, wb)
    if worst > 1e-5:
        sys.exit(f"finite-difference check failed: max relative error {worst:.2e}")


if __name__ == "__main__":
    main()
