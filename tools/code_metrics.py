#!/usr/bin/env python3
"""Code-shape metrics of Sources/ and the checks CI runs on them (issue 31; STYLE.md, llm.c's budget).

    python3 tools/code_metrics.py            # print the counts (longest functions, long lines, report keys, ...)
    python3 tools/code_metrics.py --json     # the same as one JSON object
    python3 tools/code_metrics.py --check    # exit 1 on a new violation (run by tools/test.sh)

--check fails when
  * a function body in Sources/ runs over 120 lines, or a line over 120 columns, beyond what
    tools/code_metrics_baseline.json still allows per file (the baseline only shrinks: a file that gets better
    must have its entry lowered with --write-baseline, a file that gets worse fails);
  * a module imports a project module that is not below it in LAYERS (the module graph stated in Package.swift's
    header and the README), or Package.swift declares such a dependency.

Function lengths are counted by matching braces from a `func`, `init`, `subscript` or computed `var` declaration
to its closing brace (comment and string contents are skipped); long lines count characters, not bytes.
"""
import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "Sources")
BASELINE = os.path.join(ROOT, "tools", "code_metrics_baseline.json")
MAX_FUNCTION = 120
MAX_COLUMNS = 120

# The module graph, lowest first: a module may import only modules in earlier layers (and system modules).
LAYERS = [
    ["Diagnostics"],                       # ErrorContext: the file, stage, key, tensor, expected and found of errors
    ["CBLAS", "CHDF5", "DNNLBridge", "CKernels", "SafeFiles", "JSONKeys"],
    ["MappedIO", "TensorCore", "Tokenizer"],
    ["GGUF", "Safetensors", "Quantization"],
    ["Model"],
    ["Checkpoint", "Evaluation"],          # the model's file format and tensor archives; metrics of a model
    ["Training", "Import"],                # trainers (state files are tensor archives); readers of foreign formats
    ["Export", "Recipes"],                 # writers for servers (reusing the readers' tables); the stage contract
    ["Passes"],
    ["Workbench"],
    ["compress"],
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}

DECL = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*(?:(?:public|private|fileprivate|internal|open|static|final|override|"
                  r"mutating|nonmutating|convenience|required|class|nonisolated|@inlinable|@inline\(__always\))\s+)*"
                  r"(func\s+[^\s(<]+|init[?!]?\s*[(<]|subscript\s*[(<]|var\s+\w+\s*:[^=]*\{\s*$)")


def swift_files(root):
    for d, _, names in os.walk(root):
        for n in sorted(names):
            if n.endswith(".swift"):
                yield os.path.join(d, n)


def strip_code(line, state):
    """The line with comments and string contents blanked (braces in them must not count). state carries
    whether a block comment or a multi-line string is open across lines."""
    out = []
    i = 0
    while i < len(line):
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"] = False
            i = j + 2
            continue
        if state["multiline"]:
            j = line.find('"""', i)
            if j < 0:
                return "".join(out)
            state["multiline"] = False
            i = j + 3
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        if line.startswith('"""', i):
            state["multiline"] = True
            i += 3
            continue
        if c == '"':
            # A one-line string; interpolations' parentheses may hold strings too, so skip by depth.
            i += 1
            depth = 0
            while i < len(line):
                if line[i] == "\\" and i + 1 < len(line) and line[i + 1] == "(":
                    depth += 1
                    i += 2
                    continue
                if line[i] == "\\":
                    i += 2
                    continue
                if depth and line[i] == ")":
                    depth -= 1
                elif not depth and line[i] == '"':
                    break
                i += 1
            i += 1
            out.append('""')
            continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    """(name, first line, length in lines) of every function-like body in the file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    state = {"block": False, "multiline": False}
    code = [strip_code(l, state) for l in lines]
    result = []
    for n, text in enumerate(code):
        m = DECL.match(text)
        if not m:
            continue
        depth = 0
        opened = False
        for k in range(n, len(code)):
            for ch in code[k]:
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
            if opened and depth <= 0:
                result.append((m.group(1).strip(" ({<"), n + 1, k - n + 1))
                break
            if not opened and k > n + 8:   # a protocol requirement or a declaration without a body
                break
    return result


def measure():
    files = {}
    all_functions = []
    long_lines = 0
    report_keys = 0
    catches = 0
    imports = {}
    for path in swift_files(SOURCES):
        rel = os.path.relpath(path, ROOT)
        module = rel.split(os.sep)[1]
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")
        n_long = sum(1 for l in lines if len(l) > MAX_COLUMNS)
        fns = functions(path)
        n_over = sum(1 for _, _, length in fns if length > MAX_FUNCTION)
        files[rel] = {"long_lines": n_long, "long_functions": n_over}
        long_lines += n_long
        all_functions += [(length, f"{rel}:{line}", name) for name, line, length in fns]
        # String-keyed entries of JSONValue dictionaries (pass reports, settings echoed, cache keys).
        report_keys += len(re.findall(r'"[a-z][a-z0-9_]*":\s*(?:\.(?:int|double|string|bool|array|object|null)\b|JSONValue)',
                                      text))
        catches += len(re.findall(r"\bcatch\s+let\s+\w+\s+as\s+\w+", text))
        for m in re.finditer(r"^(?:@testable\s+)?import\s+(\w+)", text, re.M):
            imports.setdefault(module, {}).setdefault(m.group(1), rel)
    all_functions.sort(reverse=True)
    return files, all_functions, long_lines, report_keys, catches, imports


def package_edges():
    with open(os.path.join(ROOT, "Package.swift")) as f:
        text = f.read()
    edges = {}
    for m in re.finditer(r'\.(?:target|executableTarget)\(name:\s*"([\w-]+)",\s*dependencies:\s*\[(.*?)\]', text, re.S):
        edges[m.group(1)] = re.findall(r'^\s*"(\w+)"|,\s*"(\w+)"|\[\s*"(\w+)"', "[" + m.group(2))
        edges[m.group(1)] = [a or b or c for a, b, c in edges[m.group(1)]]
    return edges


def graph_violations(imports):
    bad = []
    for module, used in sorted(imports.items()):
        if module not in LAYER:
            bad.append(f"Sources/{module}: not in tools/code_metrics.py's LAYERS (add it to the module graph)")
            continue
        for target, where in sorted(used.items()):
            if target in LAYER and LAYER[target] >= LAYER[module]:
                bad.append(f"{where}: {module} imports {target}, which is not below it in the module graph")
    for module, deps in sorted(package_edges().items()):
        if module not in LAYER:
            continue
        for target in deps:
            if target in LAYER and LAYER[target] >= LAYER[module]:
                bad.append(f"Package.swift: {module} depends on {target}, which is not below it in the module graph")
    return bad


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true")
    p.add_argument("--write-baseline", action="store_true", help="record today's per-file counts as the allowance")
    args = p.parse_args()
    files, fns, long_lines, report_keys, catches, imports = measure()
    edges = sorted(f"{m}->{t}" for m, used in imports.items() for t in used if t in LAYER)
    summary = {
        "source_lines": sum(1 for path in swift_files(SOURCES) for _ in open(path, encoding="utf-8")),
        "functions_over_100_lines": sum(1 for length, _, _ in fns if length > 100),
        f"functions_over_{MAX_FUNCTION}_lines": sum(1 for length, _, _ in fns if length > MAX_FUNCTION),
        "longest_functions": [{"lines": length, "at": at, "name": name} for length, at, name in fns[:8]],
        f"lines_over_{MAX_COLUMNS}_columns": long_lines,
        "string_keyed_report_entries": report_keys,
        "catch_as_sites": catches,
        "module_edges": len(edges),
        "graph_violations": graph_violations(imports),
    }
    if args.write_baseline:
        allowance = {k: v for k, v in files.items() if v["long_lines"] or v["long_functions"]}
        with open(BASELINE, "w") as f:
            json.dump(allowance, f, indent=1, sort_keys=True)
            f.write("\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            if k == "longest_functions":
                print("longest functions:")
                for e in v:
                    print(f"  {e['lines']:4d}  {e['at']}  {e['name']}")
            elif k == "graph_violations":
                print(f"graph violations: {len(v)}")
                for e in v:
                    print(f"  {e}")
            else:
                print(f"{k.replace('_', ' ')}: {v}")
    if args.check:
        failures = list(summary["graph_violations"])
        allowance = json.load(open(BASELINE)) if os.path.exists(BASELINE) else {}
        for rel, counts in sorted(files.items()):
            allowed = allowance.get(rel, {"long_lines": 0, "long_functions": 0})
            for key, what in (("long_lines", f"lines over {MAX_COLUMNS} columns"),
                              ("long_functions", f"functions over {MAX_FUNCTION} lines")):
                if counts[key] > allowed[key]:
                    failures.append(f"{rel}: {counts[key]} {what}, {allowed[key]} allowed "
                                    f"(tools/code_metrics_baseline.json; split the function or wrap the line)")
        for f in failures:
            print(f"code_metrics: {f}", file=sys.stderr)
        if failures:
            sys.exit(1)
        print("code_metrics: no new violation")


if __name__ == "__main__":
    main()
