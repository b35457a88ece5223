#!/usr/bin/env python3
"""Hand-run second reader of a DeciLM Hugging Face export (never run by CI): llama.cpp's own
convert_hf_to_gguf.py turns our `compress export --format hf` directory into a GGUF, which
tools/verify_export_gguf.py then evaluates with llama.cpp.

    python3 tools/convert_deci_llamacpp.py --llama-cpp DIR --hf OUT-hf --outfile OUT.gguf [--outtype f32]

DIR is a llama.cpp source tree with its matching gguf-py (the llama-cpp-python sdist holds one under
vendor/llama.cpp: `pip download llama-cpp-python --no-deps --no-binary :all:`). The converter is run unchanged
except for one thing: its DeciLM reader picks the tokenizer by vocabulary size (128,256 → GPT-2 BPE, as for
Llama-3.1-Nemotron; anything else → DeciLM-7B's SentencePiece-style Llama vocab). SmolLM2's 49,152-token
tokenizer is GPT-2 BPE, so the reader is pointed at the converter's own GPT-2 BPE vocab writer
(`TextModel._set_vocab_gpt2`). Everything else (block_configs, per-layer head and KV-head counts, ffn_mult →
feed-forward length, q/k permutation, tensor names) is the converter's.
"""
import argparse
import runpy
import sys
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, type=Path)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--outfile", required=True)
    ap.add_argument("--outtype", default="f32")
    a = ap.parse_args()
    sys.path[:0] = [str(a.llama_cpp), str(a.llama_cpp / "gguf-py")]
    from conversion.base import TextModel
    from conversion.deci import DeciModel
    DeciModel.set_vocab = TextModel._set_vocab_gpt2
    sys.argv = ["convert_hf_to_gguf.py", a.hf, "--outfile", a.outfile, "--outtype", a.outtype]
    runpy.run_path(str(a.llama_cpp / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main()
