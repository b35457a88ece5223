#!/usr/bin/env python3
"""Plot one or more `compress sweep` results: a quality metric against size, one series per sweep, each sweep's
Pareto front (no other point of it is both smaller and better) drawn as a line, the base model marked.

    python3 tools/plot_sweep.py -o OUT [--metric ppl|kld|kld_p99|same_top_p] DIR [DIR ...]   writes OUT.svg and OUT.png

Metrics (the columns of results.csv): ppl, perplexity (log scale, the default); kld and kld_p99, the mean and 99th
percentile of KL(base || point) per token in nats (log scale; the base is 0, so it is not drawn); same_top_p, the
share of positions whose most likely token is the base's (higher is better; the base is 1).

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


METRICS = {
    # key in results.json: (axis label, log scale, higher is better, the base's value: key of results.json or a constant)
    "ppl": ("perplexity (log scale)", True, False, "base_ppl"),
    "kld": ("mean KL(base || model) per token, nats (log scale)", True, False, None),
    "kld_p99": ("99th percentile of KL(base || model), nats (log scale)", True, False, None),
    "same_top_p": ("share of positions with the base's top-1 token", False, True, 1.0),
}


def pareto(points, higher_is_better=False):
    """Points (size, value, label) not dominated by another (smaller or equal size and a better or equal value)."""
    sign = -1 if higher_is_better else 1
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p[0], sign * p[1])):
        if sign * p[1] < best:
            front.append(p)
            best = sign * p[1]
    return front


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="output path without extension")
    ap.add_argument("--metric", choices=sorted(METRICS), default="ppl", help="the y axis (default ppl)")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    ylabel, log, higher, base_value = METRICS[a.metric]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    base = None
    for d in a.dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            r = json.load(f)
        axes = [x["path"] for x in r["axes"]]
        pts = [(row["bytes"] / 2**20, row[a.metric], ", ".join(f"{row['values'][p]}" for p in axes))
               for row in r["rows"] if row.get(a.metric) is not None and (not log or row[a.metric] > 0)]
        if not pts:
            continue
        label = r.get("name") or os.path.basename(os.path.normpath(d))
        line = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, label=f"{label} ({', '.join(axes)})", zorder=3)
        front = pareto(pts, higher)
        ax.plot([p[0] for p in front], [p[1] for p in front], color=line.get_facecolor()[0], lw=1.2, alpha=0.8, zorder=2)
        for x, y, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6, alpha=0.8)
        value = r.get(base_value) if isinstance(base_value, str) else base_value
        if value is not None and r.get("base_bytes"):
            base = (r["base_bytes"] / 2**20, value)
    if base:
        ax.scatter([base[0]], [base[1]], marker="*", s=160, color="black", label="base model", zorder=4)
    if not any(ax.collections):
        print(f"plot_sweep.py: no point has '{a.metric}' (an eval stage with the divergence from the base)", file=sys.stderr)
        return 1
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("size of the stored tensors (MiB)")
    ax.set_ylabel(ylabel)
    ax.set_title("size against quality; lines: Pareto fronts")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    for ext in ("svg", "png"):
        fig.savefig(f"{a.output}.{ext}", dpi=150)
    return 0


if __name__ == "__main__":
    sys.exit(main())
