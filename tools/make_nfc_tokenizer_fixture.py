#!/usr/bin/env python3
"""Parity fixture for the NFC normalizer of byte-level BPE tokenizer.json files (Qwen2 / Qwen2.5 carry
`"normalizer": {"type": "NFC"}`).

Trains a small byte-level BPE with Hugging Face `tokenizers` (BpeTrainer on a few hundred bytes of text with
accented letters and Hangul, all precomposed), Qwen2-like: normalizer NFC, pre-tokenizer Split(Qwen2's regex,
Isolated) then ByteLevel without regex, ByteLevel decoder and post-processor, the special token <|endoftext|>
and a non-special added token "café" (both normalized=false: matched in the raw text, before NFC). Then it
encodes test strings, among them decomposed forms ("e\\u0301", "A\\u030A", Hangul jamo sequences) and added
tokens next to decomposed text, with the library, once as is and once with the normalizer removed.

Run by hand (CI never runs it; it needs `pip install tokenizers`):
    python3 tools/make_nfc_tokenizer_fixture.py --out Tests/Fixtures/nfc-bpe

Writes:
    tokenizer.json   the tokenizer, normalizer NFC
    cases.json       {"tokenizers_version", "cases": [{"text", "ids", "ids_without_normalizer"}]}
"""
import argparse
import json
import os

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TRAINING_TEXT = [
    "Le café de la rue Émile est fermé. Hélène a préféré le thé à l'école.",
    "Åsa och Björn åt smörgåsar på ön. Ängel, Öl, Übermäßig, Straße, Müller, Köln.",
    "Señor Núñez comió piñata y jalapeño en São Paulo; ação, coração, não.",
    "한국어 텍스트입니다. 한글은 아름답다. 안녕하세요, 세계!",
    "naïve résumé coöperate façade déjà vu, crème brûlée, fiancé, éé èè ê.",
    "The quick brown fox jumps over the lazy dog 12345.",
]

CASES = [
    "café", "cafe\u0301", "e\u0301", "\u00e9", "A\u030a", "\u00c5sa", "A\u030asa och o\u0308n",
    "\u1112\u1161\u11ab\u1100\u1173\u11af", "한글", "\u1100\u1161 \u110b\u1161\u11ab",
    "Le cafe\u0301 de Hélène est ferme\u0301.", "re\u0301sume\u0301 and résumé",
    "<|endoftext|>e\u0301", "e\u0301<|endoftext|>cafe\u0301", "<|endoftext|>\u0301", "\u0301",
    "cafe\u0301 café", "S\u0327a\u0303o Paulo", "U\u0308bermäßig", "e\u0301\u0301", "o\u0308\u0304",
    "\u212b ohm \u2126", "plain ascii text 123",
]


def build():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tok.add_tokens([AddedToken("café", special=False, normalized=False)])
    return tok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tok = build()
    path = os.path.join(args.out, "tokenizer.json")
    tok.save(path)
    tok = Tokenizer.from_file(path)  # encode with what the file says
    plain = Tokenizer.from_file(path)
    plain.normalizer = None
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
              "ids_without_normalizer": plain.encode(t, add_special_tokens=False).ids} for t in CASES]
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "cases": cases}, f, ensure_ascii=True, indent=1)
        f.write("\n")
    changed = sum(c["ids"] != c["ids_without_normalizer"] for c in cases)
    print(f"wrote {path} ({tok.get_vocab_size()} tokens) and {len(cases)} cases, {changed} changed by NFC")


if __name__ == "__main__":
    main()
