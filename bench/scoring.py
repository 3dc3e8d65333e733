"""MID and per-sample PMI at scale: mmviz.scoring against the reference code's way.

Data: --refs (30,000) reference pairs and --candidates (30,000) candidate pairs of --d (512) -d
x and y features, seeded and correlated (x and y share a 64-d latent, plus noise), float32.
Each method fits the Gaussians to the references itself (the functional calls), in float64:
  ours    scoring.pmi / scoring.mid: covariances accumulated in row chunks, Cholesky factors,
          squared Mahalanobis distances by triangular solves a chunk of candidates at a time
          (O(M D^2) time, no M x M or N x N matrix);
  naive   the reference code's way (naver-ai/mid.metric `_compute_pmi`, in numpy): explicit
          inverses, log-determinants from singular values, and per sample
          diag(b @ S^-1 @ b.T), which forms an M x M matrix (M^2 * 8 bytes: 7.2 GB at 30,000), so
          its PMI runs at --naive-candidates (5,000); its set-level MID (D x D traces) runs at
          the full size.
Times are the best of --repeats untraced calls after an untimed one; peak memory is a separate call under
tracemalloc (numpy's allocations are traced; the inputs, made before, are not counted).
Ratios naive / ours come from the same run at the same size (PMI at --naive-candidates, MID
at --candidates), with the largest difference between the two results. Goals:
pmi_30000_no_MxM (our peak at 30,000 candidates under 10% of M^2 * 8 bytes),
pmi_faster_than_naive and mid_faster_than_naive (ratio > 1). Prints the numbers and writes
bench/results/scoring.json.

    .venv/bin/python bench/scoring.py [--refs 30000] [--candidates 30000] [--d 512]
                                      [--naive-candidates 5000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz import scoring  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float32: a shared 64-d latent through fixed random maps, plus independent noise."""
    maps = np.random.default_rng(1234)
    a, b = maps.standard_normal((64, d)), maps.standard_normal((64, d))
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 64))
    x = latent @ a + 2.0 * rng.standard_normal((n, d))
    y = latent @ b + 2.0 * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.float32)


def _naive_fit(x, y, x0, y0):
    """Per modality (x, y, z = [x; y]): (centred candidates, S^-1, C) and I, the reference code's way."""
    x, y, x0, y0 = (np.asarray(a, dtype=np.float64) for a in (x, y, x0, y0))
    parts, logdet = [], []
    for a, a0 in ((x, x0), (y, y0), (np.hstack([x, y]), np.hstack([x0, y0]))):
        mu = a.mean(axis=0)
        s = np.cov(a.T)
        b = a0 - mu
        parts.append((b, np.linalg.inv(s), b.T @ b / (len(b) - 1)))
        logdet.append(np.log(np.linalg.svd(s, compute_uv=False)).sum())
    return parts, 0.5 * (logdet[0] + logdet[1] - logdet[2])


def naive_pmi(x, y, x0, y0) -> np.ndarray:
    parts, mi = _naive_fit(x, y, x0, y0)
    d = [np.diag(b @ inv @ b.T) for b, inv, _ in parts]  # the M x M matrix, for its diagonal
    return mi + 0.5 * (d[0] + d[1] - d[2])


def naive_mid(x, y, x0, y0) -> float:
    parts, mi = _naive_fit(x, y, x0, y0)
    tr = [np.trace(inv @ c) for _, inv, c in parts]
    return float(mi + 0.5 * (tr[0] + tr[1] - tr[2]))


def timed(f, repeats: int) -> tuple[float, object]:
    """(best of `repeats` timed calls, in seconds; the result of an untimed first call, which also
    takes the one-off costs: BLAS thread start-up, first touches of fresh memory)."""
    out = f()
    return min(timeit.repeat(f, number=1, repeat=repeats)), out


def peak_mb(f) -> float:
    """Peak traced memory of one call of f, in MB (allocations made before the call excluded)."""
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=int, default=30_000, help="reference pairs (default 30000)")
    ap.add_argument("--candidates", type=int, default=30_000, help="candidate pairs (default 30000)")
    ap.add_argument("--d", type=int, default=512, help="dimensions of x and of y (default 512)")
    ap.add_argument("--naive-candidates", type=int, default=5000,
                    help="candidates for the naive PMI, which holds an M x M matrix (default 5000)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per method; the best counts (default 3)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scoring.json"))
    args = ap.parse_args()
    warnings.simplefilter("error", scoring.RegularisedWarning)  # N > 2D here: shrinking would be a bug

    load_before = os.getloadavg()[0]
    rx, ry = features(args.refs, args.d, seed=0)
    cx, cy = features(args.candidates, args.d, seed=1)
    m0 = min(args.naive_candidates, args.candidates)
    sx, sy = cx[:m0], cy[:m0]

    t_pmi, pmi = timed(lambda: scoring.pmi(rx, ry, cx, cy), args.repeats)
    t_mid, mid = timed(lambda: scoring.mid(rx, ry, cx, cy), args.repeats)
    t_pmi_small, pmi_small = timed(lambda: scoring.pmi(rx, ry, sx, sy), args.repeats)
    t_naive_pmi, naive_small = timed(lambda: naive_pmi(rx, ry, sx, sy), args.repeats)
    t_naive_mid, naive_m = timed(lambda: naive_mid(rx, ry, cx, cy), args.repeats)
    mem = {"ours_pmi": peak_mb(lambda: scoring.pmi(rx, ry, cx, cy)),
           "ours_mid": peak_mb(lambda: scoring.mid(rx, ry, cx, cy)),
           "ours_pmi_small": peak_mb(lambda: scoring.pmi(rx, ry, sx, sy)),
           "naive_pmi_small": peak_mb(lambda: naive_pmi(rx, ry, sx, sy)),
           "naive_mid": peak_mb(lambda: naive_mid(rx, ry, cx, cy))}
    mxm_mb = args.candidates ** 2 * 8 / 1e6  # the naive PMI's one M x M float64 matrix at full size
    pmi_diff = float(np.abs(pmi_small - naive_small).max())
    mid_diff = abs(mid - naive_m)

    what = f"{args.candidates} candidates against {args.refs} references, {args.d}-d x and y"
    print(f"{what}, best of {args.repeats}")
    print(f"  ours  pmi  M={args.candidates:<6} {t_pmi:7.2f} s  peak {mem['ours_pmi']:7.0f} MB "
          f"(M x M would be {mxm_mb:.0f} MB)")
    print(f"  ours  mid  M={args.candidates:<6} {t_mid:7.2f} s  peak {mem['ours_mid']:7.0f} MB")
    print(f"  naive mid  M={args.candidates:<6} {t_naive_mid:7.2f} s  peak {mem['naive_mid']:7.0f} MB  "
          f"{t_naive_mid / t_mid:5.1f}x  |diff| {mid_diff:.2e}")
    print(f"  ours  pmi  M={m0:<6} {t_pmi_small:7.2f} s  peak {mem['ours_pmi_small']:7.0f} MB")
    print(f"  naive pmi  M={m0:<6} {t_naive_pmi:7.2f} s  peak {mem['naive_pmi_small']:7.0f} MB  "
          f"{t_naive_pmi / t_pmi_small:5.1f}x  max |diff| {pmi_diff:.2e}")
    default_size = (args.refs, args.candidates, args.d) == (30_000, 30_000, 512)  # what the goals are for
    goals = {"pmi_30000_no_MxM": default_size and mem["ours_pmi"] < 0.1 * mxm_mb,
             "pmi_faster_than_naive": t_naive_pmi > t_pmi_small,
             "mid_faster_than_naive": t_naive_mid > t_mid}
    report = {
        "benchmark": "scoring", "what": what,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "numpy": np.__version__,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "refs": args.refs, "candidates": args.candidates, "d": args.d, "naive_candidates": m0,
        "repeats": args.repeats,
        "seconds": {"ours_pmi": round(t_pmi, 3), "ours_mid": round(t_mid, 3), "naive_mid": round(t_naive_mid, 3),
                    "ours_pmi_small": round(t_pmi_small, 3), "naive_pmi_small": round(t_naive_pmi, 3)},
        "peak_mb": {k: round(v, 1) for k, v in mem.items()},
        "naive_pmi_mxm_mb_at_candidates": round(mxm_mb, 1),
        "ratio_naive_over_ours": {"pmi_time": round(t_naive_pmi / t_pmi_small, 2),
                                  "pmi_memory": round(mem["naive_pmi_small"] / mem["ours_pmi_small"], 2),
                                  "mid_time": round(t_naive_mid / t_mid, 2),
                                  "mid_memory": round(mem["naive_mid"] / mem["ours_mid"], 2)},
        "max_abs_diff": {"pmi": pmi_diff, "mid": mid_diff},
        "values": {"mid": mid, "mean_pmi": float(pmi.mean()), "mi": float(scoring.mutual_information(rx, ry))},
        "goals": goals,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
