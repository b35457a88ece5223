#!/usr/bin/env python3
"""Turn a MediaWiki XML dump (.bz2) into clean prose split by article.

    python3 tools/prepare_wikipedia.py --dump PATH.bz2 --out-dir DIR \
        [--test-fraction 0.2] [--seed 0]

Writes DIR/wiki.train.txt, DIR/wiki.test.txt and DIR/wiki.manifest.json.
Standard library only. Each article is written as its title line followed by
its text; articles are separated by one blank line and sorted by title.

Split rule (see split_articles): every kept article gets the key
sha256(f"{seed}\\n{title}" as UTF-8), hex. Articles are ordered by (key,
title); the test split is the shortest prefix of that order whose character
total is closest to test_fraction * total characters (first such prefix on a
tie), clamped so that neither split is empty when 0 < test_fraction < 1 and
there are at least two articles. "Characters" of an article are the Unicode
code points of its block (title line + "\\n" + text, without the separating
blank line).

The cleaned articles are held in memory until the split is decided, which is
fine for shortened/partial dumps, not for a full 20 GB enwiki dump.
"""
import argparse
import bz2
import hashlib
import html
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

OUTPUTS = ("wiki.train.txt", "wiki.test.txt", "wiki.manifest.json")

SPLIT_RULE = (
    "key = sha256((str(seed) + '\\n' + title).encode('utf-8')).hexdigest(); "
    "order kept articles by (key, title); test = the shortest prefix of that "
    "order whose summed characters is closest to test_fraction * total "
    "characters, clamped to leave both splits non-empty when "
    "0 < test_fraction < 1 and there are >= 2 articles; train = the rest. "
    "characters = len(title + '\\n' + text) in code points; words = "
    "len(block.split()). Each output file lists its articles sorted by title."
)

# Sections that are only references or link lists (compared lower-cased).
DROP_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes",
    "bibliography", "sources", "footnotes", "citations", "works cited",
    "notes and references", "references and notes", "external link",
}
# Elements dropped together with their content (not prose).
DROP_ELEMENTS = ("ref", "math", "chem", "ce", "gallery", "timeline", "imagemap",
                 "score", "graph", "hiero", "pre", "source", "syntaxhighlight",
                 "references", "mapframe", "templatedata", "inputbox")
# Tags stripped while their content is kept.
KEEP_TAGS = ("span", "div", "small", "big", "sub", "sup", "center", "blockquote",
             "poem", "p", "s", "u", "i", "b", "em", "strong", "code", "tt",
             "abbr", "font", "cite", "del", "ins", "var", "kbd", "samp", "q",
             "nowiki", "strike", "mark", "bdi", "ol", "ul", "li", "dl", "dd",
             "dt", "table", "tr", "td", "th", "caption", "hr", "wbr",
             "onlyinclude", "includeonly", "noinclude", "section")
# Interwiki prefixes that look like language codes but are visible links.
NOT_LANGUAGES = {"doi", "hdl", "mw", "voy", "wmf", "arxiv", "rfc"}
DISAMBIG_TEMPLATE = re.compile(
    r"\{\{\s*(?:disambiguation|disambig|disamb|dab|[a-z]*dis)\s*(?:\||\}\})",
    re.I)

RE_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
RE_SELF_CLOSING = re.compile(r"<(?:%s)\b[^<>]*/>" % "|".join(DROP_ELEMENTS), re.I)
RE_ELEMENT = re.compile(r"<(%s)\b[^<>]*>.*?</\1\s*>" % "|".join(DROP_ELEMENTS),
                        re.I | re.S)
RE_BR = re.compile(r"<br\s*/?>", re.I)
RE_TAG = re.compile(r"</?(?:%s)\b[^<>]*>" % "|".join(KEEP_TAGS), re.I)
RE_PARAM = re.compile(r"\{\{\{[^{}]*\}\}\}")
# Innermost template: no "{{" or "}}" inside, single braces allowed.
RE_TEMPLATE = re.compile(r"\{\{(?:[^{}]|\{(?!\{)|\}(?!\}))*\}\}")
RE_LINK = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*)\]\]")
RE_EXT_LINK = re.compile(r"\[(?:(?:https?:|ftp:)?//|mailto:)[^\s\]]*\s*([^\]]*)\]")
RE_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\[\]{}|\"]*")
RE_QUOTES = re.compile(r"'{2,5}")
RE_MAGIC = re.compile(r"__[A-Z]+__")
RE_HEADING = re.compile(r"^(=+)\s*(.*?)\s*(=+)$")
RE_LIST = re.compile(r"^[*#:;]+\s*")
RE_RULE = re.compile(r"^-{4,}$")
# Leftovers of removed templates: "()", "(; )", "( , 1894)", "word ,".
RE_PAREN_LEAD = re.compile(r"\(\s*(?:[,;:]\s*)+")
RE_PAREN_TRAIL = re.compile(r"(?:\s*[,;:])+\s*\)")
RE_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")
RE_SPACE_PUNCT = re.compile(r"(?<=[^\s.]) +([,;:]|\.(?!\.))(?=\s|$)")
RE_LANG = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*|simple")


class DumpError(Exception):
    pass


def _replace_innermost(pattern, repl, text):
    while True:
        text, n = pattern.subn(repl, text)
        if not n:
            return text


def _link(m):
    target, pipe, label = m.group(1).partition("|")
    target = target.strip()
    visible = target.startswith(":")  # [[:Category:X]] is a plain link
    target = target.lstrip(":").strip()
    prefix, colon, rest = target.partition(":")
    if colon and not visible:
        if prefix.strip().lower() in ("file", "image", "category"):
            return ""
        if RE_LANG.fullmatch(prefix) and prefix not in NOT_LANGUAGES:
            return ""  # interlanguage link
    if pipe:
        if label.strip():
            return label
        # Pipe trick: [[Ns:Title (qualifier)|]] shows "Title".
        return re.sub(r"\s*\([^()]*\)$", "", rest if colon else target)
    return target.lstrip("#")


def _remove_tables(text):
    out, depth = [], 0
    for line in text.split("\n"):
        s = line.lstrip(" :")
        if s.startswith("{|"):
            depth += 1
        elif s.startswith("|}"):
            depth = max(depth - 1, 0)
        elif not depth:
            out.append(line)
    return "\n".join(out)


def _inline(text):
    """Everything except section handling and final whitespace cleanup."""
    text = RE_COMMENT.sub("", text.replace("\r", ""))
    text = RE_SELF_CLOSING.sub("", text)
    text = RE_ELEMENT.sub("", text)
    text = RE_PARAM.sub("", text)
    text = _replace_innermost(RE_TEMPLATE, "", text)
    text = _remove_tables(text)
    text = RE_BR.sub("\n", text)
    text = RE_TAG.sub("", text)
    # External links first so their brackets cannot hide an enclosing [[...]].
    text = RE_EXT_LINK.sub(r"\1", text)
    text = RE_URL.sub("", text)
    text = _replace_innermost(RE_LINK, _link, text)
    text = RE_QUOTES.sub("", text)
    return RE_MAGIC.sub("", text)


def _sections(text):
    """Split into [level, title, body_lines]; the lead has level 0."""
    sections = [[0, "", []]]
    for line in text.split("\n"):
        line = line.strip()
        m = RE_HEADING.match(line)
        if m and m.group(2):
            sections.append([min(len(m.group(1)), len(m.group(3)), 6),
                             m.group(2), []])
        else:
            sections[-1][2].append(line)
    return sections


def _tidy(lines):
    out = []
    for line in lines:
        line = RE_LIST.sub("", line)
        line = re.sub(r"[ \t]+", " ", html.unescape(line).replace("\xa0", " "))
        line = RE_PAREN_TRAIL.sub(")", RE_PAREN_LEAD.sub("(", line))
        line = RE_EMPTY_PARENS.sub("", line)
        line = RE_SPACE_PUNCT.sub(r"\1", line)
        out.append("" if RE_RULE.match(line) else line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def clean_wikitext(text):
    """Convert article wikitext to plain prose (headings as plain lines)."""
    sections, skip_below = [], None
    for level, title, body in _sections(_inline(text)):
        if skip_below is not None and level > skip_below:
            continue  # subsection of a dropped section
        title = _tidy([title])
        skip_below = level if title.lower() in DROP_SECTIONS else None
        if skip_below is None:
            sections.append((level, title, _tidy(body)))
    # Keep a heading only if its section or one of its subsections has text.
    parts = [title + ("\n" + body if body else "") if level else body
             for i, (level, title, body) in enumerate(sections)
             if (body if not level else _has_text(sections, i))]
    return "\n\n".join(parts)


def _has_text(sections, i):
    for j in range(i, len(sections)):
        if j > i and sections[j][0] <= sections[i][0]:
            return False
        if sections[j][2]:
            return True
    return False


def is_disambiguation(title, text):
    return title.endswith("(disambiguation)") or bool(DISAMBIG_TEMPLATE.search(text))


def _local(tag):
    return tag.rpartition("}")[2]


def iter_pages(stream):
    """Yield (title, ns, redirect, text) per <page>, ignoring XML namespaces."""
    context = ET.iterparse(stream, events=("start", "end"))
    root = None
    for event, elem in context:
        if root is None:
            root = elem
        if event != "end" or _local(elem.tag) != "page":
            continue
        title, ns, redirect, text = "", "0", False, ""
        for child in elem.iter():
            name = _local(child.tag)
            if name == "title":
                title = (child.text or "").strip()
            elif name == "ns":
                ns = (child.text or "").strip()
            elif name == "redirect":
                redirect = True
            elif name == "text":
                text = child.text or ""  # last revision wins
        if re.match(r"\s*#redirect\b", text, re.I):
            redirect = True
        yield title, ns, redirect, text
        root.clear()  # keep memory flat while streaming


def read_articles(path):
    """Return ([(title, block)], skipped-counts) from a .bz2 dump."""
    articles, seen = [], set()
    skipped = {"redirect": 0, "not_main_namespace": 0, "disambiguation": 0,
               "empty": 0, "duplicate_title": 0}
    try:
        with bz2.open(path, "rb") as stream:
            for title, ns, redirect, text in iter_pages(stream):
                if ns != "0":
                    reason = "not_main_namespace"
                elif redirect:
                    reason = "redirect"
                elif is_disambiguation(title, text):
                    reason = "disambiguation"
                elif title in seen:
                    reason = "duplicate_title"
                else:
                    body = clean_wikitext(text)
                    reason = None if body and title else "empty"
                if reason:
                    skipped[reason] += 1
                    continue
                seen.add(title)
                articles.append((title, title + "\n" + body))
    except (OSError, EOFError) as e:
        raise DumpError(f"{path}: not a readable bzip2 file ({e})") from e
    except ET.ParseError as e:
        raise DumpError(f"{path}: not valid XML ({e})") from e
    if not articles:
        raise DumpError(f"{path}: no main-namespace articles found")
    return articles, skipped


def split_articles(articles, test_fraction, seed):
    """Map title -> "train"/"test" following SPLIT_RULE."""
    def key(item):
        title = item[0]
        return hashlib.sha256(f"{seed}\n{title}".encode("utf-8")).hexdigest(), title

    ordered = sorted(articles, key=key)
    target = test_fraction * sum(len(block) for _, block in articles)
    best_k, best_gap, total = 0, target, 0
    for k, (_, block) in enumerate(ordered, 1):
        total += len(block)
        if abs(total - target) < best_gap:
            best_k, best_gap = k, abs(total - target)
    if 0 < test_fraction < 1 and len(ordered) >= 2:
        best_k = min(max(best_k, 1), len(ordered) - 1)
    return {title: "test" if i < best_k else "train"
            for i, (title, _) in enumerate(ordered)}


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prepare(dump, out_dir, test_fraction=0.2, seed=0):
    articles, skipped = read_articles(dump)
    split = split_articles(articles, test_fraction, seed)
    articles.sort()
    rows, texts = [], {"train": [], "test": []}
    totals = {s: {"articles": 0, "characters": 0, "words": 0} for s in texts}
    for title, block in articles:
        s = split[title]
        row = {"title": title, "split": s, "characters": len(block),
               "words": len(block.split())}
        rows.append(row)
        texts[s].append(block)
        totals[s]["articles"] += 1
        totals[s]["characters"] += row["characters"]
        totals[s]["words"] += row["words"]
    manifest = {
        "dump": {"file": os.path.basename(dump), "sha256": _sha256(dump)},
        "seed": seed,
        "test_fraction": test_fraction,
        "split_rule": SPLIT_RULE,
        "skipped_pages": skipped,
        "totals": totals,
        "articles": rows,
    }
    os.makedirs(out_dir, exist_ok=True)
    for s in ("train", "test"):
        body = "\n\n".join(texts[s])
        _write_atomic(os.path.join(out_dir, f"wiki.{s}.txt"),
                      body + "\n" if body else "")
    _write_atomic(os.path.join(out_dir, "wiki.manifest.json"),
                  json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dump", required=True, help="MediaWiki XML dump, .bz2")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 <= args.test_fraction <= 1:
        ap.error("--test-fraction must be within [0, 1]")
    try:
        manifest = prepare(args.dump, args.out_dir, args.test_fraction, args.seed)
    except DumpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for s, t in manifest["totals"].items():
        print(f"{s}: {t['articles']} articles, {t['characters']} characters, "
              f"{t['words']} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
