import bz2
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))
import prepare_wikipedia as pw  # noqa: E402

SCRIPT = TOOLS / "prepare_wikipedia.py"
clean = pw.clean_wikitext


# --- markup rules -----------------------------------------------------------

def test_templates_nested_multiline_and_parameters():
    text = "A {{Infobox\n| name = {{lang|fr|x}}\n| a = {{{1|}}}\n}}B {{cn}}."
    assert clean(text) == "A B."


def test_tables_nested_and_indented():
    text = "Before\n{| class=x\n| a\n|-\n|\n{|\n| inner\n|}\n| b\n|}\nAfter\n:{|\n| c\n|}\nEnd"
    assert clean(text) == "Before\nAfter\nEnd"


def test_refs_paired_and_self_closing():
    text = 'One<ref name="a/b"/> two<ref>{{cite web|url=http://x}}</ref> three<ref name=c>x</ref>.'
    assert clean(text) == "One two three."


def test_html_tags_comments_and_dropped_elements():
    text = ("x<sub>2</sub> <span style='a'>kept</span> <!-- hidden\nline -->"
            "<math>{{a}}</math>y<br />z\n<gallery>\nA.jpg|c\n</gallery>\n<!-- open")
    assert clean(text) == "x2 kept y\nz"


def test_file_and_image_links_with_nested_links_in_caption():
    text = ("[[File:A.jpg|thumb|A [[cat]] on a [[mat|rug]] [http://x.org site]]]"
            "Text [[Image:B.png|left|[[x]]]]here.")
    assert clean(text) == "Text here."


def test_category_and_interlanguage_links_dropped():
    text = "Body.\n[[Category:Things| ]]\n[[fr:Chose]]\n[[zh-min-nan:Mih]]"
    assert clean(text) == "Body."


def test_wikilinks():
    assert clean("[[Paris|the capital]] and [[London]]s") == "the capital and Londons"
    assert clean("[[Foo (band)|]] [[:Category:Bar]] [[wikt:word|word]]") == \
        "Foo Category:Bar word"
    assert clean("[[doi:10.1/x|paper]] [[Page#Part]]") == "paper Page#Part"


def test_external_links_and_bare_urls():
    text = "See [http://example.org the site], [https://x.org] or http://bare.org/p?q=1 now."
    assert clean(text) == "See the site, or now."


def test_entities_unescaped():
    assert clean("A&nbsp;B &amp; C&ndash;D &mdash; &lt;E&gt;") == "A B & C–D — <E>"


def test_magic_words_and_quotes():
    assert clean("__TOC__\n'''Bold''' and ''italic'' and '''''both'''''") == \
        "Bold and italic and both"


def test_headings_become_plain_lines():
    assert clean("Lead.\n== History ==\nOld.\n=== ''Early'' ===\nEarlier.") == \
        "Lead.\n\nHistory\nOld.\n\nEarly\nEarlier."


def test_reference_sections_dropped_with_subsections():
    text = ("Lead.\n== See also ==\n* [[X]]\n== References ==\n{{reflist}}\n"
            "=== Sources ===\nBook.\n== Legacy ==\nKept.\n== External links ==\n"
            "* [http://x.org Site]\n== notes ==\nGone.")
    assert clean(text) == "Lead.\n\nLegacy\nKept."


def test_empty_headings_dropped_but_parents_of_text_kept():
    text = "Lead.\n== Empty ==\n{{main|X}}\n== Parent ==\n=== Child ===\nText."
    assert clean(text) == "Lead.\n\nParent\n\nChild\nText."


def test_list_bullets_stripped():
    assert clean("Items:\n* one\n** two\n# three\n: four\n; five") == \
        "Items:\none\ntwo\nthree\nfour\nfive"


def test_whitespace_collapsed_and_trailing_spaces_stripped():
    assert clean("a  \n\n\n\n\nb\t \n c") == "a\n\nb\nc"


def test_template_leftovers_tidied():
    assert clean("Achilles ({{IPA|x}}; {{lang|grc|y}}, ''Ak'', {{IPA|z}}) was") == \
        "Achilles (Ak) was"
    assert clean("X ({{lang|a}}) is at {{convert|1|km}} , then") == "X is at, then"


def test_disambiguation_detection():
    assert pw.is_disambiguation("Foo (disambiguation)", "x")
    assert pw.is_disambiguation("Foo", "x\n{{disambiguation|geo}}")
    assert pw.is_disambiguation("Aa", "{{geodis}}")
    assert not pw.is_disambiguation("Foo", "{{distinguish|Bar}}{{Disability}}")
    assert not pw.is_disambiguation("Foo", "{{about||Foo (disambiguation)}}")


# --- split ------------------------------------------------------------------

ARTICLES = [(f"Title {i}", f"Title {i}\n" + "w " * (50 + 37 * (i % 11)))
            for i in range(60)]


def test_split_is_deterministic_and_order_independent():
    first = pw.split_articles(ARTICLES, 0.2, 0)
    shuffled = ARTICLES[:]
    random.Random(1).shuffle(shuffled)
    assert pw.split_articles(shuffled, 0.2, 0) == first
    assert pw.split_articles(ARTICLES, 0.2, 1) != first


def test_split_follows_documented_rule():
    split = pw.split_articles(ARTICLES, 0.2, 7)
    key = lambda a: (hashlib.sha256(f"7\n{a[0]}".encode()).hexdigest(), a[0])
    ordered = sorted(ARTICLES, key=key)
    k = sum(split[t] == "test" for t, _ in ARTICLES)
    assert all(split[t] == "test" for t, _ in ordered[:k])
    assert all(split[t] == "train" for t, _ in ordered[k:])
    total = sum(len(b) for _, b in ARTICLES)
    sums = [sum(len(b) for _, b in ordered[:j]) for j in range(len(ordered) + 1)]
    assert k == min(range(len(sums)), key=lambda j: abs(sums[j] - 0.2 * total))
    assert abs(sums[k] / total - 0.2) < 0.02


def test_split_never_leaves_a_side_empty():
    two = ARTICLES[:2]
    assert sorted(pw.split_articles(two, 0.01, 0).values()) == ["test", "train"]
    assert set(pw.split_articles(two, 0.0, 0).values()) == {"train"}


# --- end to end -------------------------------------------------------------

NS = ' xmlns="http://www.mediawiki.org/xml/export-0.10/"'


def page(title, text, ns=0, redirect=False):
    red = '<redirect title="X" />' if redirect else ""
    return (f"<page><title>{title}</title><ns>{ns}</ns>{red}<revision>"
            f"<text xml:space=\"preserve\">{text}</text></revision></page>")


def make_dump(path, pages, xmlns=NS):
    xml = f"<mediawiki{xmlns}><siteinfo/>{''.join(pages)}</mediawiki>"
    path.write_bytes(bz2.compress(xml.encode("utf-8")))
    return path


def run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("xmlns", [NS, ""])
def test_end_to_end(tmp_path, xmlns):
    pages = [page(f"Art {i}", f"'''Art {i}''' is [[thing|a thing]] number {i}. " * 20)
             for i in range(10)]
    pages += [page("Redir", "#REDIRECT [[Art 1]]", redirect=True),
              page("Old redir", "#redirect [[Art 2]]"),
              page("Talk:Art 1", "talk", ns=1),
              page("Art (disambiguation)", "* [[Art 1]]"),
              page("Blank", "{{stub}}")]
    dump = make_dump(tmp_path / "d.xml.bz2", pages, xmlns)
    out = tmp_path / "out"
    res = run("--dump", dump, "--out-dir", out)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == sorted(pw.OUTPUTS)  # no temp files left
    m = json.loads((out / "wiki.manifest.json").read_text("utf-8"))
    assert m["dump"]["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert m["skipped_pages"] == {"redirect": 2, "not_main_namespace": 1,
                                  "disambiguation": 1, "empty": 1,
                                  "duplicate_title": 0}
    assert [a["title"] for a in m["articles"]] == sorted(f"Art {i}" for i in range(10))
    for s in ("train", "test"):
        text = (out / f"wiki.{s}.txt").read_bytes().decode("utf-8")
        rows = [a for a in m["articles"] if a["split"] == s]
        assert rows and "\r" not in text and text.endswith(".\n")
        blocks = text[:-1].split("\n\n")
        assert [b.split("\n")[0] for b in blocks] == [a["title"] for a in rows]
        assert [len(b) for b in blocks] == [a["characters"] for a in rows]
        assert blocks[0].split("\n")[1].startswith(f"{rows[0]['title']} is a thing")
        assert m["totals"][s]["words"] == sum(len(b.split()) for b in blocks)


def test_outputs_identical_across_hash_seeds(tmp_path):
    pages = [page(f"P{i}", f"Text {i}. " * (5 + i)) for i in range(30)]
    dump = make_dump(tmp_path / "d.bz2", pages)
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"o{hash_seed}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        assert run("--dump", dump, "--out-dir", out, "--seed", "3", env=env).returncode == 0
        outputs.append([(out / n).read_bytes() for n in pw.OUTPUTS])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("content,message", [
    (b"plain text", "not a readable bzip2 file"),
    (bz2.compress(b"not xml"), "not valid XML"),
    (bz2.compress(b"<mediawiki>" + page("Help:X", "x", ns=12).encode() + b"</mediawiki>"),
     "no main-namespace articles"),
])
def test_bad_input(tmp_path, content, message):
    dump = tmp_path / "bad.bz2"
    dump.write_bytes(content)
    res = run("--dump", dump, "--out-dir", tmp_path / "out")
    assert res.returncode == 1
    assert str(dump) in res.stderr and message in res.stderr
    assert not (tmp_path / "out").exists()
