#!/usr/bin/env python3
"""How different are the hallucinated views of one basis, as a ConvNet with instance
normalisation sees them? Prints, for a HaBa `distilled.safetensors`, the mean correlation
between two views of the same basis after standardising each image per channel (what the
network's normalisation divides out), beside the same number for two distinct bases of
one class. Needs only numpy: `python3 scripts/view-similarity.py RUN/distilled.safetensors`.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        body = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64}
    return {
        name: np.frombuffer(body[slice(*t["data_offsets"])], dtypes[t["dtype"]]).reshape(t["shape"])
        for name, t in header.items()
        if name != "__metadata__"
    }


def conv2d(x, w, b):
    """Valid cross-correlation; x [N, Ci, H, W], w [Co, Ci, k, k]."""
    k = w.shape[-1]
    ho, wo = x.shape[2] - k + 1, x.shape[3] - k + 1
    y = sum(
        np.einsum("nihw,oi->nohw", x[:, :, a : a + ho, c : c + wo], w[:, :, a, c])
        for a in range(k)
        for c in range(k)
    )
    return y + b[None, :, None, None]


def conv_transpose2d(z, w, b):
    """Stride-1 transposed convolution; z [N, Ci, h, w], w [Ci, Co, k, k]."""
    k = w.shape[-1]
    n, _, h, wd = z.shape
    y = np.zeros((n, w.shape[1], h + k - 1, wd + k - 1))
    for a in range(k):
        for c in range(k):
            y[:, :, a : a + h, c : c + wd] += np.einsum("nihw,io->nohw", z, w[:, :, a, c])
    return y + b[None, :, None, None]


def standardised(x):
    """Each image's channels to zero mean and unit variance, flattened per image."""
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True) + 1e-8
    return ((x - mean) / std).reshape(*x.shape[:-3], -1)


def correlation(a, b):
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def main(path):
    t = read_safetensors(path)
    if "hallucinators.enc.weight" not in t:
        sys.exit(f"{path}: no hallucinators (a plain DM run?)")
    bases, labels = t["bases"].astype(np.float64), t["labels"]
    h = {k[len("hallucinators.") :]: v.astype(np.float64) for k, v in t.items() if k.startswith("hallucinators.")}
    m = h["enc.weight"].shape[0]
    if m < 2:
        sys.exit(f"{path}: one hallucinator, no two views to compare")
    views = np.stack(
        [
            conv_transpose2d(
                h["scale"][j] * conv2d(bases, h["enc.weight"][j], h["enc.bias"][j]) + h["shift"][j],
                h["dec.weight"][j],
                h["dec.bias"][j],
            )
            for j in range(m)
        ],
        axis=1,
    )  # [N, M, C, H, W]
    z = standardised(views)
    same_basis = np.mean([correlation(z[:, j], z[:, k]).mean() for j in range(m) for k in range(j + 1, m)])
    zb = standardised(bases)
    same_class = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        same_class += [correlation(zb[i], zb[k]) for n, i in enumerate(idx) for k in idx[n + 1 :]]
    print(f"{path}: {m} hallucinators, {len(bases)} bases")
    print(f"  two views of one basis:      correlation {same_basis:.3f}")
    if same_class:
        print(f"  two bases of one class:      correlation {np.mean(same_class):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
