#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Error model of integer attention arithmetic against the 1e-4 bound
(docs/PERFORMANCE.md, "Fifth sitting").

usage: scripts/exact-error-model.py        (needs python3-numpy)

Estimates, for the shapes of tests/test-attention.c (head_dim 128, 4-bit
Lloyd-Max centroids, scores of standard deviation ~2.2), the relative L2
error of one attention output when

  - the softmax weights of each chunk of 64 tokens are rounded to B-bit
    integers (the largest to 2^B - 1), centroids exact: the values half of
    an integer kernel (vpdpwssd takes 15-bit signed weights);
  - the score table T[j][m] = q_j c[m] is rounded to 16 bits with one scale
    for the query (global), or with a per-coordinate multiplier as the
    8-bit option uses (per-coord), or to 24 bits (the exact kernel's).

Prints the largest of 4 draws per context length.
"""
import numpy as np

CENTROIDS = np.array([0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6180, 2.0690, 2.7326])
CENTROIDS = np.concatenate([-CENTROIDS[::-1], CENTROIDS])
DIM, SCORE_STD, CHUNK = 128, 2.2, 64
rng = np.random.default_rng(1)


def attend(scores, values):
    p = np.exp(scores - scores.max())
    return (p[:, None] * values).sum(0) / p.sum()


def relative(got, want):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def weights_error(n, bits):
    values = CENTROIDS[rng.integers(0, 16, (n, DIM))]
    norms = 1 + 0.1 * rng.standard_normal(n)
    p = np.exp(SCORE_STD * rng.standard_normal(n))
    p /= p.max()
    w = p * norms
    top = (1 << bits) - 1
    wq = np.empty_like(w)
    for i in range(0, n, CHUNK):
        unit = w[i:i + CHUNK].max() / top
        wq[i:i + CHUNK] = np.round(w[i:i + CHUNK] / unit) * unit
    want = (w[:, None] * values).sum(0) / p.sum()
    got = (wq[:, None] * values).sum(0) / p.sum()
    return relative(got, want)


def table_error(n, mode):
    idx = rng.integers(0, 16, (n, DIM))
    values = CENTROIDS[rng.integers(0, 16, (n, DIM))]
    q = rng.standard_normal(DIM)
    table = q[:, None] * CENTROIDS[None, :]
    rows = np.arange(DIM)[None, :]
    raw = table[rows, idx].sum(1)
    scale = SCORE_STD / raw.std()
    if mode == "global16":
        step = np.abs(table).max() / 32767
    elif mode == "per-coord16":
        mult = np.clip(np.ceil(np.abs(q) / np.abs(q).max() * 127), 1, 127)
        step = (np.abs(table).max() / (127 * 32767) * mult)[:, None]
    else:
        step = np.abs(table).max() / 8388352
    rounded = np.round(table / step) * step
    return relative(attend(scale * rounded[rows, idx].sum(1), values), attend(scale * raw, values))


def main():
    lengths = (64, 1000, 10000, 40000)
    print("%-24s" % "case" + "".join("%10d" % n for n in lengths))
    for bits in (8, 14, 15, 16):
        print("%-24s" % ("weights %d-bit" % bits) +
              "".join("%10.1e" % max(weights_error(n, bits) for _ in range(4)) for n in lengths))
    for mode in ("global16", "per-coord16", "24-bit"):
        print("%-24s" % ("score table " + mode) +
              "".join("%10.1e" % max(table_error(n, mode) for _ in range(4)) for n in lengths))


if __name__ == "__main__":
    main()
