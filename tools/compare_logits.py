#!/usr/bin/env python3
"""Compare two raw float32 logits files of shape (W, V) (from `compress eval --logits-out` and
tools/reference_eval.py --logits-out): max and mean absolute difference, argmax agreement.

    python3 tools/compare_logits.py data/window0.ours.f32 data/window0.ref.f32 [--vocab 49152]
"""
import argparse

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("ours")
ap.add_argument("ref")
ap.add_argument("--vocab", type=int, default=49152)
a = ap.parse_args()
x = np.fromfile(a.ours, dtype="<f4").reshape(-1, a.vocab)
y = np.fromfile(a.ref, dtype="<f4").reshape(-1, a.vocab)
d = np.abs(x.astype(np.float64) - y)
print(f"{x.shape[0]} positions x {a.vocab}: max |diff| {d.max():.3e}, mean |diff| {d.mean():.3e}, "
      f"logit range [{y.min():.1f}, {y.max():.1f}], argmax agreement {np.mean(x.argmax(1) == y.argmax(1)) * 100:.2f}%")
