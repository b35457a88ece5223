#!/usr/bin/env python3
"""Writes the small GGUF test fixtures and their reference values (run by hand, not by the tests).

    pip install gguf numpy && python3 tools/make_gguf_fixtures.py

Outputs in Tests/ImportersTests/Fixtures/:
  quants.gguf        one tensor per supported GGML type (odd block counts, random data), an unsupported
                     Q2_K tensor, metadata of every value type incl. nested arrays, general.alignment = 64
  quants.json        per tensor: type, GGUF shape, offset/count into quants.ref.bin; plus gguf's block sizes
  quants.ref.bin     little-endian float32 reference values from gguf.quants.dequantize
  llama_tiny.gguf    2-layer Llama with llama.cpp-permuted attn_q/attn_k and no output.weight (tied)
  llama_tiny.json    expected HF names/shapes and offsets of the unpermuted q/k into llama_tiny.ref.bin
  llama_tiny.ref.bin the original (HF-order) q/k weights
  gemma3_tiny.gguf   Tests/Fixtures/tiny-gemma3.h5 written as llama.cpp's convert_hf_to_gguf.py writes Gemma 3:
                     arch gemma3, every norm weight stored as 1 + w (its norm_shift), q/k unpermuted, layer pattern
                     as a per-layer bool array (sliding_window_pattern), rope.freq_base_swa, F32

Every file stays under 200 KB.
"""
import json
import pathlib

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

OUT = pathlib.Path(__file__).resolve().parent.parent / "Tests" / "ImportersTests" / "Fixtures"
rng = np.random.default_rng(20240611)


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8)


def k_quant_blocks(qtype, n_blocks):
    """Random k-quant blocks with finite f16 scales (gguf has no k-quant quantizer)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin lead the block
        raw[:, 0:2] = f16_bytes(rng.uniform(-0.05, 0.05, n_blocks)).reshape(n_blocks, 2)
        raw[:, 2:4] = f16_bytes(rng.uniform(0, 0.05, n_blocks)).reshape(n_blocks, 2)
    elif qtype == Q.Q6_K:  # d ends the block
        raw[:, size - 2:] = f16_bytes(rng.uniform(-0.01, 0.01, n_blocks)).reshape(n_blocks, 2)
    return raw


SPECIAL = [0.0, -0.0, 2.0 ** -24, 2.0 ** -14, 65504.0, -65504.0, np.inf, -np.inf, np.nan, 1e-40, 3.0e38]


def write_quants():
    writer = gguf.GGUFWriter(OUT / "quants.gguf", arch="fixture")
    writer.add_custom_alignment(64)
    meta = {
        "test.uint8": (200, V.UINT8), "test.int8": (-100, V.INT8),
        "test.uint16": (60000, V.UINT16), "test.int16": (-30000, V.INT16),
        "test.uint32": (4_000_000_000, V.UINT32), "test.int32": (-2_000_000_000, V.INT32),
        "test.uint64": (2 ** 63 + 5, V.UINT64), "test.int64": (-(2 ** 62) - 7, V.INT64),
        "test.float32": (1.5, V.FLOAT32), "test.float64": (3.141592653589793, V.FLOAT64),
        "test.bool": (True, V.BOOL), "test.string": ("héllo ✓", V.STRING),
    }
    for key, (val, vtype) in meta.items():
        writer.add_key_value(key, val, vtype)
    writer.add_key_value("test.array_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    writer.add_key_value("test.array_i64", [-1, 2 ** 40], V.ARRAY, sub_type=V.INT64)
    writer.add_key_value("test.array_f64", [0.25, -1e300], V.ARRAY, sub_type=V.FLOAT64)
    writer.add_array("test.array_str", ["a", "bc", ""])
    writer.add_array("test.array_f32", [0.5, -2.0])
    writer.add_array("test.array_bool", [True, False, True])
    writer.add_array("test.nested_i32", [[1, 2], [3], [4, 5, 6]])
    writer.add_array("test.nested_str", [["x"], ["y", "z"]])

    entries, refs, offset = [], [], 0

    def add(name, qtype, ggml_bytes, ref, raw_dtype=True):
        nonlocal offset
        writer.add_tensor(name, ggml_bytes, raw_dtype=qtype if raw_dtype else None)
        ref = np.ascontiguousarray(ref, dtype=np.float32)
        shape = list(reversed(ref.shape))
        entries.append({"name": name, "type": qtype.name, "shape": shape,
                        "ref_offset": offset, "count": int(ref.size)})
        refs.append(ref.reshape(-1))
        offset += ref.size

    # Float types: random values plus special ones (subnormals, infinities, NaN, signed zero).
    f32 = rng.standard_normal((5, 7)).astype(np.float32)
    f32.reshape(-1)[:len(SPECIAL)] = SPECIAL
    add("t_f32", Q.F32, f32, f32, raw_dtype=False)
    f16 = rng.standard_normal((5, 7)).astype(np.float16)
    f16.reshape(-1)[:9] = SPECIAL[:9]
    add("t_f16", Q.F16, f16, f16.astype(np.float32), raw_dtype=False)
    bf16 = gguf.quants.quantize(f32, Q.BF16)
    add("t_bf16", Q.BF16, bf16, gguf.quants.dequantize(bf16, Q.BF16))

    # Legacy 32-element blocks: 5 rows x 3 blocks = 15 blocks.
    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        data = (rng.standard_normal((5, 96)) * rng.uniform(0.01, 3)).astype(np.float32)
        q = gguf.quants.quantize(data, qtype)
        add(f"t_{qtype.name.lower()}", qtype, q, gguf.quants.dequantize(q, qtype))
    data = rng.standard_normal((3, 3, 32)).astype(np.float32)  # a 3-D tensor, 9 blocks
    q = gguf.quants.quantize(data, Q.Q8_0)
    add("t_q8_0_3d", Q.Q8_0, q, gguf.quants.dequantize(q, Q.Q8_0))

    # k-quants: 3 rows x 1 super-block of 256.
    for qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        q = k_quant_blocks(qtype, 3)
        add(f"t_{qtype.name.lower()}", qtype, q, gguf.quants.dequantize(q, qtype))

    # A known but unsupported type: dequantize must fail with a clear error.
    q2 = rng.integers(0, 256, size=(1, gguf.GGML_QUANT_SIZES[Q.Q2_K][1]), dtype=np.uint8)
    writer.add_tensor("t_unsupported_q2_k", q2, raw_dtype=Q.Q2_K)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    np.concatenate(refs).astype("<f4").tofile(OUT / "quants.ref.bin")
    sizes = {t.name: list(gguf.GGML_QUANT_SIZES[t]) for t in Q if t in gguf.GGML_QUANT_SIZES}
    ids = {t.name: int(t) for t in Q}
    (OUT / "quants.json").write_text(json.dumps({"tensors": entries, "quant_sizes": sizes, "type_ids": ids}, indent=1))


def permute(w, n_head):
    """llama.cpp's HF -> GGUF rotary row permutation of q/k (per head: halves -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_tiny():
    hidden, heads, kv_heads, ffn, vocab, layers = 32, 4, 2, 48, 32, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(OUT / "llama_tiny.gguf", arch="llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(head_dim)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    expected, refs, offset = {}, [], 0

    def add(gguf_name, hf_name, hf_value, stored=None):
        nonlocal offset
        writer.add_tensor(gguf_name, hf_value if stored is None else stored)
        expected[gguf_name] = {"hf_name": hf_name, "hf_shape": list(hf_value.shape)}
        if stored is not None:  # only permuted tensors differ from the stored bytes
            expected[gguf_name].update(ref_offset=offset, count=int(hf_value.size))
            refs.append(hf_value.reshape(-1))
            offset += hf_value.size

    add("token_embd.weight", "model.embed_tokens.weight", rand(vocab, hidden))
    for i in range(layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = rand(heads * head_dim, hidden), rand(kv_heads * head_dim, hidden)
        add(b + "attn_q.weight", p + "self_attn.q_proj.weight", q, permute(q, heads))
        add(b + "attn_k.weight", p + "self_attn.k_proj.weight", k, permute(k, kv_heads))
        add(b + "attn_v.weight", p + "self_attn.v_proj.weight", rand(kv_heads * head_dim, hidden))
        add(b + "attn_output.weight", p + "self_attn.o_proj.weight", rand(hidden, hidden))
        add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", rand(ffn, hidden))
        add(b + "ffn_up.weight", p + "mlp.up_proj.weight", rand(ffn, hidden))
        add(b + "ffn_down.weight", p + "mlp.down_proj.weight", rand(hidden, ffn))
        add(b + "attn_norm.weight", p + "input_layernorm.weight", rand(hidden))
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", rand(hidden))
    add("output_norm.weight", "model.norm.weight", rand(hidden))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    np.concatenate(refs).astype("<f4").tofile(OUT / "llama_tiny.ref.bin")
    (OUT / "llama_tiny.json").write_text(json.dumps(expected, indent=1))


GEMMA3_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def write_gemma3_tiny():
    """tiny-gemma3.h5 (transformers weights) in llama.cpp's Gemma 3 GGUF convention, by hand with gguf-py."""
    import h5py
    src = OUT.parent.parent / "Fixtures" / "tiny-gemma3.h5"
    with h5py.File(src, "r") as f:
        cfg = json.loads(f.attrs["config"])
        tensors = {k: np.asarray(v, dtype=np.float32) for k, v in f["tensors"].items()}
    w = gguf.GGUFWriter(str(OUT / "gemma3_tiny.gguf"), arch="gemma3")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_float32("gemma3.rope.freq_base_swa", cfg["rope_parameters"]["sliding_attention"]["rope_theta"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_array("gemma3.attention.sliding_window_pattern", [t == "sliding_attention" for t in cfg["layer_types"]])
    for name, a in sorted(tensors.items()):
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            parts = name.split(".")  # model.layers.N.<module>.weight
            gname = f"blk.{parts[2]}.{GEMMA3_NAMES['.'.join(parts[3:-1])]}.weight"
        if name.endswith("norm.weight"):
            a = a + 1  # convert_hf_to_gguf.py Gemma3Model: data_torch + norm_shift (1.0)
        w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    write_quants()
    write_llama_tiny()
    write_gemma3_tiny()
    for f in sorted(OUT.glob("*")):
        print(f"{f.stat().st_size:8d}  {f.name}")
