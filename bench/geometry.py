"""Geometry metrics speed: mmviz.geometry.all_metrics on 100k x 512 pairs against plain numpy.

Data: seeded random float32 pairs with a modality gap (shared content plus per-modality noise,
images and texts pushed apart along one direction, rows normalised). Timed, best of --repeats:
  mmviz       all_metrics end to end on all n pairs (goal: < 5 s), then each metric function alone;
  baseline    the same metrics the plain numpy way (float64, exact, whole n x n matrices,
              sklearn on all pairs for separability) on the first
              --baseline-n pairs (10k: at 100k the n x n matrices alone would need 80 GB),
              against all_metrics on the same subset, exact (max_n = n) and with its default
              max_n. Vendi's plain form, the eigenvalues of the n x n kernel, is O(n^3) (about a
              minute per modality at 10k here), so it is left out of the baseline total and timed
              alone on the first --vendi-n pairs.
Prints a table and writes bench/results/geometry.json.

    .venv/bin/python bench/geometry.py [--n 100000] [--d 512] [--repeats 3] [--baseline-n 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz import geometry as G  # noqa: E402
from mmviz.projection.threads import busy_seconds, own_seconds  # noqa: E402


def make_pairs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired unit vectors: content z shared by a pair, own noise per modality, then a gap."""
    rng = np.random.default_rng(seed)
    gap = rng.standard_normal(d).astype(np.float32)
    gap /= np.linalg.norm(gap)
    z = rng.standard_normal((n, d), dtype=np.float32)
    out = []
    for sign in (1, -1):
        v = z + 0.7 * rng.standard_normal((n, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v += sign * 0.4 * gap
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out[0], out[1]


def best(f, repeats: int) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        t = min(t, time.perf_counter() - t0)
    return t, out


# -----------------------------------------------------------------------------
# the plain numpy way, one function per metric, exact

def naive_metrics(images: np.ndarray, texts: np.ndarray) -> dict[str, tuple[float, float]]:
    """{metric: (seconds, value)} computed the straightforward way; normalising counts once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    out = {}

    def timed(name, f):
        t0 = time.perf_counter()
        value = f()
        out[name] = (time.perf_counter() - t0, value)

    def unif(z):  # squared distances 2 - 2 u.v of unit rows, all n^2 at once, diagonal removed
        k = np.exp(-2 * np.clip(2 - 2 * (z @ z.T), 0, None))
        return float(np.log((k.sum() - np.trace(k)) / (len(z) * (len(z) - 1))))

    def erank(z):
        lam = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, bias=True)), 0, None)
        p = lam[lam > 0] / lam.sum()
        return float(np.exp(-np.sum(p * np.log(p))))

    t0 = time.perf_counter()
    x = images.astype(np.float64)
    y = texts.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    out["normalise"] = (time.perf_counter() - t0, None)
    n = len(x)
    timed("gap_length", lambda: float(np.linalg.norm(x.mean(0) - y.mean(0))))

    def cosines():
        c = x @ y.T
        off = c[~np.eye(n, dtype=bool)]
        return {"paired_mean": np.diag(c).mean(), "unpaired_mean": off.mean(), "unpaired_std": off.std()}
    timed("cosines", cosines)
    timed("linear_separability", lambda: float(cross_val_score(
        LogisticRegression(max_iter=1000), np.vstack([x, y]), np.r_[np.ones(n), np.zeros(n)],
        cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()))

    def c3():
        d = x - y
        c = d.mean(0)
        perm = np.random.default_rng(0).permutation(n)
        ca, cb = d[perm[:n // 2]].mean(0), d[perm[n // 2:]].mean(0)
        inside = []
        for z in (x, y):
            w, v = np.linalg.eigh(np.cov(z, rowvar=False, bias=True))
            w, v = w[::-1], v[:, ::-1]
            k = int(np.searchsorted(np.cumsum(w) / w.sum(), 0.9) + 1)
            inside.append(np.sum((v[:, :k].T @ c) ** 2) / (c @ c))
        return {"constant_length": np.linalg.norm(c), "direction_consistency": ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb),
                "orthogonality": 1 - np.mean(inside), "residual_norm": np.linalg.norm(d - c, axis=1).mean(),
                "constant_fraction": (c @ c) / np.mean(np.sum(d ** 2, axis=1))}
    timed("c3_decomposition", c3)
    timed("uniformity_image", lambda: unif(x))
    timed("uniformity_text", lambda: unif(y))
    timed("uniformity_union", lambda: unif(np.vstack([x, y])))
    timed("alignment", lambda: float(np.mean(np.sum((x - y) ** 2, axis=1))))

    def rel():
        c = x @ y.T
        own = np.diag(c).copy()
        np.fill_diagonal(c, -np.inf)
        return float(np.mean(own - c.max(1)))
    timed("relative_alignment", rel)
    timed("effective_dimension_image", lambda: erank(x))
    timed("effective_dimension_text", lambda: erank(y))
    timed("effective_dimension_joint", lambda: erank(np.vstack([x, y])))
    return out


def naive_vendi(z: np.ndarray) -> float:
    """Vendi score by its definition: eigenvalues of the n x n cosine kernel over n."""
    z = z.astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(z @ z.T / len(z)), 0, None)
    p = lam[lam > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


# -----------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="pairs (default 100000)")
    ap.add_argument("--d", type=int, default=512, help="dimensions (default 512)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per variant; the best counts (default 3)")
    ap.add_argument("--baseline-n", type=int, default=10_000, help="pairs for the plain numpy baseline (default 10000)")
    ap.add_argument("--vendi-n", type=int, default=2000, help="pairs for the plain n x n Vendi (default 2000)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "geometry.json"))
    args = ap.parse_args()
    import torch

    dev = str(G._device(args.device))
    # Other jobs on a shared machine slow every number below: measure how much CPU they took.
    busy0, own0, wall0 = busy_seconds(), own_seconds(), time.perf_counter()
    images, texts = make_pairs(args.n, args.d)
    G.all_metrics(images[:2000], texts[:2000], device=dev)  # warm-up: imports (sklearn), first-call allocations

    # mmviz on all n pairs: end to end, then each function alone
    t_all, values = best(lambda: G.all_metrics(images, texts, device=dev), args.repeats)
    print(f"mmviz all_metrics, {args.n} x {args.d} pairs on {dev}: {t_all:.2f} s (goal < 5 s: {t_all < 5})")
    calls = {
        "gap_length": lambda: G.gap_length(images, texts),
        "paired_cosines": lambda: G.paired_cosines(images, texts),
        "unpaired_cosines": lambda: G.unpaired_cosines(images, texts),
        "cosine_summary": lambda: G.cosine_summary(images, texts, device=dev),
        "linear_separability": lambda: G.linear_separability(images, texts),
        "c3_decomposition": lambda: G.c3_decomposition(images, texts, device=dev),
        "uniformity_image": lambda: G.uniformity(images, device=dev),
        "uniformity_text": lambda: G.uniformity(texts, device=dev),
        "uniformity_union": lambda: G.union_uniformity(images, texts, device=dev),
        "alignment": lambda: G.alignment(images, texts),
        "relative_alignment": lambda: G.relative_alignment(images, texts, device=dev),
        "effective_dimension_image": lambda: G.effective_dimension(images, device=dev),
        "effective_dimension_text": lambda: G.effective_dimension(texts, device=dev),
        "joint_spectrum": lambda: G.joint_spectrum(images, texts, device=dev),
        "vendi_image": lambda: G.vendi_score(images, device=dev),
        "vendi_text": lambda: G.vendi_score(texts, device=dev),
    }
    per_metric = {}
    for name, f in calls.items():
        per_metric[name] = best(f, args.repeats)[0]
    print(f"\n{'metric (alone, n = %d)' % args.n:34} {'mmviz s':>9}")
    for name, t in per_metric.items():
        print(f"{name:34} {t:9.3f}")
    print(f"{'sum of the functions alone':34} {sum(per_metric.values()):9.3f}   (all_metrics shares the passes: {t_all:.3f})")

    # plain numpy baseline on the first baseline_n pairs
    bn = min(args.baseline_n, args.n)
    bx, by = images[:bn], texts[:bn]
    t_naive = float("inf")
    for _ in range(max(1, args.repeats - 2)):  # once by default: each run takes tens of seconds
        naive = naive_metrics(bx, by)
        total = sum(t for t, _ in naive.values())
        if total < t_naive:
            t_naive, naive_best = total, naive
    t_exact, exact = best(lambda: G.all_metrics(bx, by, max_n=bn, device=dev), args.repeats)
    t_default, _ = best(lambda: G.all_metrics(bx, by, device=dev), args.repeats)
    print(f"\nbaseline: plain numpy, exact, first {bn} pairs (Vendi left out, see below)")
    print(f"{'step':34} {'numpy s':>9}")
    for name, (t, _) in naive_best.items():
        print(f"{name:34} {t:9.3f}")
    print(f"{'total':34} {t_naive:9.3f}")
    print(f"mmviz all_metrics on the same {bn} pairs: exact (max_n = {bn}) {t_exact:.3f} s -> "
          f"{t_naive / t_exact:.1f}x; default max_n = {G.MAX_N} {t_default:.3f} s -> {t_naive / t_default:.1f}x")
    # the two agree where both are exact
    check = {"gap_length": "gap_length", "alignment": "alignment", "relative_alignment": "relative_alignment",
             "uniformity_image": "uniformity_image", "uniformity_text": "uniformity_text",
             "uniformity_union": "uniformity_union", "effective_dimension_image": "effective_dimension_image",
             "effective_dimension_joint": "effective_dimension_joint"}
    worst = max(abs(naive_best[k][1] - exact[v]) for k, v in check.items())
    c3n = naive_best["c3_decomposition"][1]
    worst = max(worst, *(abs(c3n[k] - exact[f"c3_{k}"]) for k in c3n if k != "direction_consistency"))
    print(f"largest difference numpy vs mmviz (exact) over {len(check) + 4} values: {worst:.1e}")

    vn = min(args.vendi_n, args.n)
    t_vn, v_naive = best(lambda: naive_vendi(images[:vn]), 1)
    t_vm, v_mmviz = best(lambda: G.vendi_score(images[:vn], device=dev), args.repeats)
    print(f"Vendi on {vn} images: n x n kernel {t_vn:.3f} s, mmviz (d x d) {t_vm:.4f} s -> {t_vn / t_vm:.0f}x "
          f"(values {v_naive:.6f} / {v_mmviz:.6f})")

    wall = time.perf_counter() - wall0
    other = None if busy0 is None else max(0.0, busy_seconds() - busy0 - (own_seconds() - own0))
    if other is not None:
        print(f"other processes used {other:.0f} CPU-s during the {wall:.0f} s run ({os.cpu_count()} cores)")
    report = {
        "benchmark": "geometry",
        "run_s": round(wall, 1),
        "other_processes_cpu_s": None if other is None else round(other, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "numpy": np.__version__, "device": dev,
        "n": args.n, "d": args.d, "max_n": G.MAX_N, "repeats": args.repeats,
        "all_metrics_s": round(t_all, 3),
        "goals": {"total<5s": t_all < 5},
        "per_metric_s": {k: round(v, 4) for k, v in per_metric.items()},
        "baseline": {
            "what": f"plain numpy, exact, whole n x n matrices, on the first {bn} of the {args.n} pairs; "
                    "Vendi (O(n^3) by its definition) left out of the total",
            "n": bn, "naive_s": {k: round(t, 4) for k, (t, _) in naive_best.items()},
            "naive_total_s": round(t_naive, 3),
            "mmviz_all_metrics_exact_s": round(t_exact, 3),
            "mmviz_all_metrics_default_s": round(t_default, 3),
            "ratio_naive_over_mmviz_exact": round(t_naive / t_exact, 2),
            "ratio_naive_over_mmviz_default": round(t_naive / t_default, 2),
            "largest_value_difference": worst,
        },
        "vendi": {"n": vn, "naive_kernel_s": round(t_vn, 4), "mmviz_s": round(t_vm, 4),
                  "ratio": round(t_vn / t_vm, 1), "values": [v_naive, v_mmviz]},
        "metrics": values,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
