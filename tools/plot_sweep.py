#!/usr/bin/env python3
"""Plot one or more `compress sweep` results: perplexity (log scale) against size, one series per sweep, each
sweep's Pareto front (no other point of it is both smaller and better) drawn as a line, the base model marked.

    python3 tools/plot_sweep.py -o OUT DIR [DIR ...]     writes OUT.svg and OUT.png

Reads DIR/results.json (written by `compress sweep` and `compress sweep collect`). Size is the checkpoint's
stored bytes (MiB) of the tensors, so pruned, sparse and quantized points share one axis. Called by
`compress sweep` at the end of a run and by `compress sweep plot`.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto(points):
    """Points (size, ppl, label) not dominated by another (smaller or equal size and lower or equal PPL)."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if p[1] < best:
            front.append(p)
            best = p[1]
    return front


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="output path without extension")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    base = None
    for d in a.dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            r = json.load(f)
        axes = [x["path"] for x in r["axes"]]
        pts = [(row["bytes"] / 2**20, row["ppl"], ", ".join(f"{row['values'][p]}" for p in axes))
               for row in r["rows"] if row.get("ppl") is not None]
        if not pts:
            continue
        label = r.get("name") or os.path.basename(os.path.normpath(d))
        line = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, label=f"{label} ({', '.join(axes)})", zorder=3)
        front = pareto(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], color=line.get_facecolor()[0], lw=1.2, alpha=0.8, zorder=2)
        for x, y, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6, alpha=0.8)
        if r.get("base_ppl") is not None and r.get("base_bytes"):
            base = (r["base_bytes"] / 2**20, r["base_ppl"])
    if base:
        ax.scatter([base[0]], [base[1]], marker="*", s=160, color="black", label="base model", zorder=4)
    ax.set_yscale("log")
    ax.set_xlabel("size of the stored tensors (MiB)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("size against quality; lines: Pareto fronts")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    for ext in ("svg", "png"):
        fig.savefig(f"{a.output}.{ext}", dpi=150)
    return 0


if __name__ == "__main__":
    sys.exit(main())
