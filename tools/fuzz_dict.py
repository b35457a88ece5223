#!/usr/bin/env python3
"""Writes the libFuzzer dictionaries Fuzz/dict/{recipe,tokenizer}.dict: JSON syntax, edge-case numbers and every
quoted lower-case key or value string in the sources that read those files. Run by hand when keys change:
    python3 tools/fuzz_dict.py
"""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTAX = ['{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '-1', '0', '1e400', '1e-400', '-0', '0.5',
          '1e308', '"\\u0000"', '"\\ud800"']
READERS = {
    'recipe': ['Sources/Recipes/*.swift', 'Sources/Passes/*.swift', 'Sources/Export/ExportStage.swift',
               'Sources/Training/Distillation.swift'],
    'tokenizer': ['Sources/Import/HFTokenizer*.swift', 'Sources/Import/Importer.swift', 'Sources/Tokenizer/*.swift'],
}


def quoted(token):
    return '"' + token.replace('\\', '\\\\').replace('"', '\\"') + '"'


def main():
    for name, patterns in READERS.items():
        keys = set()
        for pattern in patterns:
            for path in glob.glob(os.path.join(ROOT, pattern)):
                with open(path, encoding='utf-8') as f:
                    keys.update(m.group(1) for m in re.finditer(r'"([a-z][a-z0-9_.]{1,40})"', f.read()))
        lines = [f'# libFuzzer dictionary for fuzz-{name}: JSON syntax and the key and value strings its reader looks',
                 '# for. Written by tools/fuzz_dict.py; do not edit by hand.']
        lines += [f's{i}={quoted(t)}' for i, t in enumerate(SYNTAX)]
        lines += [f'k{i}={quoted(chr(34) + k + chr(34))}' for i, k in enumerate(sorted(keys))]
        with open(os.path.join(ROOT, 'Fuzz', 'dict', f'{name}.dict'), 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
        print(f'Fuzz/dict/{name}.dict: {len(keys)} strings')


if __name__ == '__main__':
    main()
