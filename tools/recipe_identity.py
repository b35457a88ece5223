#!/usr/bin/env python3
"""Bit-identity of recipe results across a refactor (issue 31, item 6). Hand-run; needs h5py and numpy.

    python3 tools/recipe_identity.py runs/identity --digests before.json       # with the old build
    python3 tools/recipe_identity.py runs/identity --digests after.json --compare before.json   # the new build

Runs four committed recipes on SmolLM2-135M (a 4-bit GGUF, dequantized), shortened so the whole check takes minutes
(fewer training steps, 4,096 evaluation tokens; the stages and their settings otherwise as committed), with
`compress apply --no-cache` (every analysis recomputed), and records SHA-256 digests of each output checkpoint:
its tensors (every dataset's path, dtype, shape and bytes and every attribute but the history, in sorted order; the
HDF5 file's own bytes hold object timestamps, so they are not compared), its history (the stage reports) with the
figures that vary between runs removed (VOLATILE and every *_seconds: wall times, speeds, the temporary
reference file), and each
exported GGUF file's bytes. Run both sides in the same DIR (paths are part of the history); --digest-only recomputes
the digests of the outputs already in DIR. --compare exits 1 when a digest differs, naming the recipe and output.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> function editing the committed recipe (dict) into the shortened one; out is the output directory.
def every_stage(r, out):
    distill = next(s for s in r["stages"] if s["stage"] == "distill")
    distill.update(steps=6, save_every=3)
    export = next(s for s in r["stages"] if s["stage"] == "export")
    export["output"] = os.path.join(out, "smollm2-every-stage.gguf")

def cmpq(r, out):
    pass

def vtrans(r, out):
    r["stages"][0].update(steps=4, save_every=2)
    r["stages"][2].update(steps=4, save_every=2)

def maskllm(r, out):
    r["calibration"]["samples"] = 8
    r["stages"][0].update(steps=4, save_every=2)

RECIPES = {
    "smollm2-every-stage": every_stage,
    "smollm2-cptquant-cmpq-3.5": cmpq,
    "smollm2-vtrans-faster-90m": vtrans,
    "smollm2-maskllm-2-4-short": maskllm,
}


VOLATILE = {"seconds", "train_seconds", "tokens_per_second", "reference_file", "peak_resident_bytes", "timing"}


def without_volatile(x):
    if isinstance(x, dict):
        return {k: without_volatile(v) for k, v in x.items() if k not in VOLATILE and not k.endswith("_seconds")}
    if isinstance(x, list):
        return [without_volatile(v) for v in x]
    return x


def history_digest(path):
    with h5py.File(path, "r") as f:
        history = json.loads(f.attrs["history"])
    return hashlib.sha256(json.dumps(without_volatile(history), sort_keys=True).encode()).hexdigest()


def h5_digest(path):
    h = hashlib.sha256()

    def attrs(obj):
        for k in sorted(obj.attrs.keys()):
            if obj.name == "/" and k == "history":
                continue
            v = obj.attrs[k]
            h.update(k.encode())
            h.update(np.asarray(v).tobytes() if not isinstance(v, (str, bytes)) else str(v).encode())

    with h5py.File(path, "r") as f:
        attrs(f)
        names = []
        f.visit(names.append)
        for name in sorted(names):
            obj = f[name]
            h.update(name.encode())
            attrs(obj)
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                h.update(str(obj.dtype).encode() + str(obj.shape).encode())
                h.update(np.asarray(data).tobytes() if not isinstance(data, (str, bytes)) else str(data).encode())
    return h.hexdigest()


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory (created)")
    p.add_argument("--compare", help="digests.json of an earlier run")
    p.add_argument("--binary", default=os.path.join(ROOT, ".build/release/compress"))
    p.add_argument("--digest-only", action="store_true", help="digest the outputs already in OUT, run nothing")
    p.add_argument("--digests", help="where to write the digests (default OUT/digests.json)")
    p.add_argument("--recipes", help="comma-separated subset of the recipes (default all)")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    digests = {}
    chosen = args.recipes.split(",") if args.recipes else list(RECIPES)
    unknown = [n for n in chosen if n not in RECIPES]
    if unknown:
        sys.exit(f"recipe_identity: unknown recipes {unknown} (known: {', '.join(RECIPES)})")
    for name in chosen:
        edit = RECIPES[name]
        with open(os.path.join(ROOT, "recipes", name + ".json")) as f:
            recipe = json.load(f)
        recipe["eval"]["tokens"] = 4096
        edit(recipe, out)
        recipe_path = os.path.join(out, name + ".json")
        with open(recipe_path, "w") as f:
            json.dump(recipe, f, indent=2)
        output = os.path.join(out, name + ".h5")
        start = time.time()
        if not args.digest_only:
            for stale in (output, output + ".state.h5"):
                if os.path.exists(stale):
                    os.remove(stale)
            print(f"recipe_identity: {name} ...", flush=True)
            with open(os.path.join(out, name + ".report.json"), "w") as report:
                subprocess.run([args.binary, "apply", recipe_path, "-o", output, "--no-cache", "--json"],
                               cwd=ROOT, check=True, stdout=report)
        digests[name + ".h5"] = h5_digest(output)
        digests[name + ".h5 history"] = history_digest(output)
        for stage in recipe["stages"]:
            if stage["stage"] == "export" and stage.get("format") == "gguf":
                digests[os.path.basename(stage["output"])] = file_digest(stage["output"])
        print(f"recipe_identity: {name} done in {time.time() - start:.0f} s", flush=True)
    with open(args.digests or os.path.join(out, "digests.json"), "w") as f:
        json.dump(digests, f, indent=2, sort_keys=True)
    for k, v in sorted(digests.items()):
        print(f"{v}  {k}")
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = [k for k in sorted(set(before) | set(digests)) if before.get(k) != digests.get(k)]
        for k in differ:
            print(f"recipe_identity: {k} differs: {before.get(k)} before, {digests.get(k)} now", file=sys.stderr)
        if differ:
            sys.exit(1)
        print(f"recipe_identity: all {len(digests)} outputs bit-identical to {args.compare}")


if __name__ == "__main__":
    main()
