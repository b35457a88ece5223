# Hand-run check for issue 19 (not a test): run from the repository root.
# Relative weight error sum||W-Q(W)||^2 / sum||W||^2 over SmolLM2's 210 decoder linear weights, group 32,
# symmetric RTN: old (2^b-1 levels, s = halfUp(max|w| / (2^(b-1)-1))) vs full range (s = m / -2^(b-1), |s| halfUp).
import h5py, numpy as np, sys
f = h5py.File('checkpoints/smollm2-135m.h5', 'r')
names = [n for n in f['tensors'] if n.startswith('model.layers.') and f['tensors'][n].ndim == 2]
def half_up(x):
    h = x.astype(np.float16); lo = h.astype(np.float32) < x
    h[lo] = np.nextafter(h[lo], np.float16(np.inf)); return h.astype(np.float32)
num = {}; den = 0.0
for n in names:
    w = f['tensors'][n][...].reshape(-1, 32).astype(np.float32)
    den += float((w.astype(np.float64) ** 2).sum())
    for b in (3, 4):
        h = 1 << (b - 1)
        s = half_up(np.abs(w).max(1) / (h - 1))[:, None]
        q = np.clip(np.round(np.divide(w, s, out=np.zeros_like(w), where=s > 0)), -(h - 1), h - 1)
        num[('old', b)] = num.get(('old', b), 0.0) + float(((w - s * q).astype(np.float64) ** 2).sum())
        i = np.abs(w).argmax(1); m = w[np.arange(len(w)), i]
        s = half_up(np.abs(m) / h) * np.where(m > 0, -1, 1)
        s = s[:, None]
        q = np.clip(np.round(np.divide(w, s, out=np.zeros_like(w), where=s != 0)), -h, h - 1)
        num[('full', b)] = num.get(('full', b), 0.0) + float(((w - s * q).astype(np.float64) ** 2).sum())
for k in sorted(num): print(k, num[k] / den)
