"""`compress export` outputs read by the reference Python readers: the `gguf` package (llama.cpp's gguf-py) and
`safetensors`. Exports of the tiny fixture checkpoint, dense and 4-bit group-32 quantized, are parsed and
cross-checked: GGUF metadata and tensor types, the safetensors header and config.json, and the values both
files hold (GGUF q/k rows in llama.cpp's rotary order; ggml Q4_0 blocks dequantized by gguf-py against the
float32 Hugging Face export; compressed-tensors packing unpacked by hand). Needs the compress binary
(COMPRESS_BIN, else .build/debug or .build/release), which `swift test` builds."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "Tests" / "Fixtures" / "tiny-llama.h5"


def compress_binary():
    for p in [os.environ.get("COMPRESS_BIN"), ROOT / ".build/debug/compress", ROOT / ".build/release/compress"]:
        if p and Path(p).is_file():
            return str(p)
    pytest.fail("no compress binary: run `swift build` first or set COMPRESS_BIN")


def run(*args):
    out = subprocess.run([compress_binary(), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    text = d / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    recipe = d / "q4.json"
    recipe.write_text(json.dumps({
        "format": 1, "base": str(FIXTURE), "output": str(d / "q4.h5"),
        "calibration": {"text": str(text), "samples": 2, "window": 32, "seed": 0},
        "stages": [{"stage": "cptquant", "allocation": "uniform", "bits_per_weight": 4.5, "widths": [4],
                    "group_size": 32, "symmetric": True, "method": "rtn", "estimator": "tdmpq"},
                   {"stage": "export", "format": "gguf", "output": str(d / "q4.gguf")},
                   {"stage": "export", "format": "hf", "output": str(d / "q4-hf")}],
    }))
    run("apply", recipe, "--json")
    run("export", FIXTURE, "--format", "gguf", "-o", d / "dense.gguf")
    run("export", FIXTURE, "--format", "hf", "-o", d / "dense-hf")
    # The quantized checkpoint, dequantized exactly (float32), as the reference for the packed forms.
    run("export", d / "q4.h5", "--format", "gguf", "--requantize", "f32", "-o", d / "q4-f32.gguf")
    return d


def tensors(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def unpermute(w, heads):
    """GGUF row 2i + j of head h is HF row j·half + i (llama.cpp's convert_hf_to_gguf.py permute, inverted)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def gguf_array(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return t, np.asarray(t.data, dtype=np.float32).reshape(shape)
    return t, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)


def test_gguf_metadata_and_dense_values(exports):
    r = gguf.GGUFReader(str(exports / "dense.gguf"))
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.embedding_length") == 64 and field("llama.feed_forward_length") == 160
    assert field("tokenizer.ggml.model") == "gpt2" and len(field("tokenizer.ggml.tokens")) == 256
    assert {t.tensor_type.name for t in r.tensors} == {"F32"}
    hf, meta = tensors(exports / "dense-hf" / "model.safetensors")
    assert meta == {"format": "pt"}
    config = json.loads((exports / "dense-hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    assert set(hf) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{l}.{m}.weight" for l in range(2) for m in
        ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
    for l in range(2):
        _, q = gguf_array(r, f"blk.{l}.attn_q.weight")
        _, k = gguf_array(r, f"blk.{l}.attn_k.weight")
        _, v = gguf_array(r, f"blk.{l}.attn_v.weight")
        np.testing.assert_array_equal(unpermute(q, 4), hf[f"model.layers.{l}.self_attn.q_proj.weight"])
        np.testing.assert_array_equal(unpermute(k, 2), hf[f"model.layers.{l}.self_attn.k_proj.weight"])
        np.testing.assert_array_equal(v, hf[f"model.layers.{l}.self_attn.v_proj.weight"])
    _, e = gguf_array(r, "token_embd.weight")
    np.testing.assert_array_equal(e, hf["model.embed_tokens.weight"])
    tok = json.loads((exports / "dense-hf" / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) == 256


def test_quantized_gguf_blocks_dequantize_to_our_weights(exports):
    r = gguf.GGUFReader(str(exports / "q4.gguf"))
    ref = gguf.GGUFReader(str(exports / "q4-f32.gguf"))
    quantized = [t for t in r.tensors if t.name.startswith("blk.") and not t.name.endswith("norm.weight")]
    assert quantized and {t.tensor_type.name for t in quantized} == {"Q4_0"}
    for t in quantized:
        _, ours = gguf_array(ref, t.name)
        _, theirs = gguf_array(r, t.name)
        np.testing.assert_array_equal(theirs, ours, err_msg=t.name)


def test_pack_quantized_safetensors_hold_the_same_weights(exports):
    config = json.loads((exports / "q4-hf" / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    (group,) = qc["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 32 and group["weights"]["symmetric"]
    hf, _ = tensors(exports / "q4-hf" / "model.safetensors")
    ref = gguf.GGUFReader(str(exports / "q4-f32.gguf"))
    assert len(group["targets"]) == 14
    for module in group["targets"]:
        packed, scale, shape = hf[module + ".weight_packed"], hf[module + ".weight_scale"], hf[module + ".weight_shape"]
        assert packed.dtype == np.int32 and shape.tolist() == [packed.shape[0], packed.shape[1] * 8]
        words = packed.view(np.uint32)
        q = np.stack([(words >> (4 * i)) & 0xF for i in range(8)], axis=-1).reshape(shape.tolist()).astype(np.int32) - 8
        w = (q.reshape(shape[0], -1, 32) * scale.astype(np.float32)[:, :, None]).reshape(shape.tolist())
        layer, kind = module.split(".")[2], module.split(".")[-1]
        name = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[kind]
        _, ours = gguf_array(ref, f"blk.{layer}.{name}.weight")
        if kind in ("q_proj", "k_proj"):
            ours = unpermute(ours, 4 if kind == "q_proj" else 2)
        np.testing.assert_array_equal(w.astype(np.float32), ours, err_msg=module)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_gguf_and_hf_exports(tmp_path, family):
    """The tiny Qwen2 (q/k/v biases) and Qwen3 (q/k norms, head_dim 16) fixtures made by transformers: gguf-py reads
    the family's architecture and keys, the biases and q/k norms under llama.cpp's names, q/k rows unpermuted (NEOX
    rotary), every tensor equal to the Hugging Face export's."""
    src = ROOT / "Tests" / "Fixtures" / f"tiny-{family}.h5"
    run("export", src, "--format", "gguf", "-o", tmp_path / "m.gguf")
    run("export", src, "--format", "hf", "-o", tmp_path / "hf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == family
    assert field(f"{family}.block_count") == 2 and field(f"{family}.attention.head_count") == 4
    assert field(f"{family}.attention.head_count_kv") == 2 and field(f"{family}.embedding_length") == 32
    assert field(f"{family}.attention.key_length") == (8 if family == "qwen2" else 16)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == family
    assert config["architectures"] == ["Qwen2ForCausalLM" if family == "qwen2" else "Qwen3ForCausalLM"]
    hf, _ = tensors(tmp_path / "hf" / "model.safetensors")
    names = {t.name for t in r.tensors}
    if family == "qwen2":
        assert {f"blk.{l}.attn_{p}.bias" for l in range(2) for p in "qkv"} <= names
        assert not any(n.endswith("attn_output.bias") or "norm" in n and "attn_q" in n for n in names)
    else:
        assert {f"blk.{l}.attn_{p}_norm.weight" for l in range(2) for p in "qk"} <= names
        assert not any(n.endswith(".bias") for n in names)
    gguf_to_hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                  "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    assert len(names) == len(hf)
    for n in names:
        if n in top:
            h = top[n]
        else:
            _, layer, module, suffix = n.split(".")
            h = f"model.layers.{layer}.{gguf_to_hf[module]}.{suffix}"
        _, values = gguf_array(r, n)
        np.testing.assert_array_equal(values.reshape(hf[h].shape), hf[h], err_msg=n)  # no q/k permutation


def test_gemma3_gguf_and_hf_exports(tmp_path):
    """The tiny Gemma 3 fixture made by transformers (layers sliding, full, sliding; window 5; query_pre_attn_scalar 24 !=
    head_dim 16; tied): the Hugging Face export is a Gemma3ForCausalLM config with its layer types; the GGUF export is
    refused, since llama.cpp scales attention by 1/sqrt(key_length). With query_pre_attn_scalar 16 (config.json edited,
    imported back) gguf-py reads `gemma3` with Gemma's keys and llama.cpp's tensor names, every norm weight stored as
    1 + w, the other tensors equal to the Hugging Face export's (no q/k permutation), and the layer pattern as per-layer
    flags; after depth pruning the flags follow the kept layers (none when llama.cpp's period-6 default gives them)."""
    src = ROOT / "Tests" / "Fixtures" / "tiny-gemma3.h5"
    run("export", src, "--format", "hf", "-o", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert config["sliding_window"] == 5 and config["query_pre_attn_scalar"] == 24 and config["head_dim"] == 16
    assert config["hidden_activation"] == "gelu_pytorch_tanh" and config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4
    refused = subprocess.run([compress_binary(), "export", str(src), "--format", "gguf", "-o", str(tmp_path / "r.gguf")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "query_pre_attn_scalar is 24" in refused.stdout + refused.stderr
    assert not (tmp_path / "r.gguf").exists()

    config["query_pre_attn_scalar"] = 16
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    run("import", tmp_path / "hf", "-o", tmp_path / "g16.h5")
    run("export", tmp_path / "g16.h5", "--format", "gguf", "-o", tmp_path / "g16.gguf")
    r = gguf.GGUFReader(str(tmp_path / "g16.gguf"))
    field = lambda k: r.fields[k].contents()
    assert field("general.architecture") == "gemma3"
    assert field("gemma3.block_count") == 3 and field("gemma3.embedding_length") == 32
    assert field("gemma3.attention.head_count") == 4 and field("gemma3.attention.head_count_kv") == 1
    assert field("gemma3.attention.key_length") == 16 and field("gemma3.attention.value_length") == 16
    assert field("gemma3.attention.sliding_window") == 5
    assert field("gemma3.attention.sliding_window_pattern") == [True, False, True]
    assert field("gemma3.rope.freq_base") == 1e6 and field("gemma3.rope.freq_base_swa") == 1e4
    assert abs(field("gemma3.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-12
    assert field("gemma3.context_length") == 256 and field("gemma3.feed_forward_length") == 64
    hf, _ = tensors(tmp_path / "hf" / "model.safetensors")
    gguf_to_hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
                  "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
                  "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names and len(names) == len(hf) == 1 + 3 * 13 + 1
    for n in names:
        if n in ("token_embd.weight", "output_norm.weight"):
            h = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}[n]
        else:
            _, layer, module, suffix = n.split(".")
            h = f"model.layers.{layer}.{gguf_to_hf[module]}.{suffix}"
        t, values = gguf_array(r, n)
        assert t.tensor_type.name == "F32"
        expected = hf[h] + np.float32(1) if n.endswith("norm.weight") else hf[h]  # llama.cpp's converter stores 1 + w
        np.testing.assert_array_equal(values.reshape(hf[h].shape), expected, err_msg=n)

    for drop, types, pattern in [(0, ["full_attention", "sliding_attention"], [False, True]),
                                 (1, ["sliding_attention", "sliding_attention"], None)]:
        run("drop-layers", tmp_path / "g16.h5", "--drop", drop, "-o", tmp_path / f"d{drop}.h5")
        run("export", tmp_path / f"d{drop}.h5", "--format", "gguf", "-o", tmp_path / f"d{drop}.gguf")
        run("export", tmp_path / f"d{drop}.h5", "--format", "hf", "-o", tmp_path / f"d{drop}-hf")
        assert json.loads((tmp_path / f"d{drop}-hf" / "config.json").read_text())["layer_types"] == types
        d = gguf.GGUFReader(str(tmp_path / f"d{drop}.gguf"))
        assert d.fields["gemma3.block_count"].contents() == 2
        key = "gemma3.attention.sliding_window_pattern"
        assert (d.fields[key].contents() if key in d.fields else None) == pattern
