"""Projection speed and quality: DOSNES (mmviz's torch implementation) against UMAP 3-D.

Data: 1,000 seeded synthetic image-caption pairs (2,000 points, 512-d, 40 topics, each
modality in its own cone, cosines like CLIP's: a modality gap), always; and, when present, the
real CLIP features of Liang et al. 2022 (../shared/data/modality-gap-features, 500 COCO
pairs = 1,000 points) as a second, real-data row. The two are not mixed: synthetic points
would form their own island next to the real ones and say nothing about either.

For each data set, on the same stacked image + caption rows:
  dosnes     DOSNES().fit_transform, default settings (best of `--repeats`), goal < 20 s
             on 2,000 points; its trustworthiness (k = 10, cosine) against the input;
  umap3      umap-learn 3-D (n_neighbors 15, min_dist 0.1, cosine, seeded): the first fit in
             the process includes numba's compilation, later ones (best of `--repeats`) do
             not; its trustworthiness;
  cache hit  cached_layout on a fresh workspace: a miss (computes and stores a DOSNES
             layout), then the same call again, timed (best of 5), goal < 0.5 s.
Prints the numbers and writes bench/results/projection.json with the goals true/false.

    .venv/bin/python bench/projection.py [--pairs 1000] [--repeats 3] [--no-real]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz.projection import DOSNES, UMAP, cached_layout  # noqa: E402
from mmviz.store import Workspace  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)

REAL = ROOT.parent / "shared" / "data" / "modality-gap-features" / "features_clip.npy"


def gapped_pairs(n: int, d: int = 512, topics: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n (image, caption) unit vectors shaped like CLIP's (cosines: same-modality ~0.5, a
    pair ~0.35, unpaired image-caption ~0.15). Each modality sits in its own cone around a
    mean direction (the two means at cosine 0.3: the gap); a pair shares a topic centre and
    a concept; each vector adds its own noise. Shares of the squared norm: modality mean
    0.5, topic 0.1, concept 0.1, noise 0.3."""
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    mu_i, other = unit(rng.normal(size=(2, d)))
    mu_t = 0.3 * mu_i + np.sqrt(1 - 0.09) * unit(other - (other @ mu_i) * mu_i)
    topic = unit(rng.normal(size=(topics, d)))[rng.integers(0, topics, n)]
    concept = np.sqrt(0.1) * topic + np.sqrt(0.1 / d) * rng.normal(size=(n, d))
    noise = lambda: np.sqrt(0.3 / d) * rng.normal(size=(n, d))  # noqa: E731
    images = np.sqrt(0.5) * mu_i + concept + noise()
    texts = np.sqrt(0.5) * mu_t + concept + noise()
    return unit(images).astype(np.float32), unit(texts).astype(np.float32)


def real_pairs() -> tuple[np.ndarray, np.ndarray] | None:
    if not REAL.is_file():
        return None
    f = np.load(REAL, allow_pickle=False).astype(np.float32)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return unit(f[0]), unit(f[1])


def trust(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return round(float(trustworthiness(x, y, n_neighbors=10, metric="cosine")), 4)


def run(name: str, images: np.ndarray, texts: np.ndarray, repeats: int, work: Path) -> dict:
    x = np.vstack([images, texts])
    out: dict = {"data": name, "pairs": len(images), "points": len(x), "dim": int(x.shape[1])}

    t_dosnes, est = float("inf"), None
    for _ in range(repeats):
        est = DOSNES(seed=0)
        t0 = time.perf_counter()
        y = est.fit_transform(x)
        t_dosnes = min(t_dosnes, time.perf_counter() - t0)
    out["dosnes"] = {"seconds": round(t_dosnes, 2), "trustworthiness": trust(x, y), "iterations": est.n_iter_,
                     "sinkhorn_rounds": est.sinkhorn_["rounds"], "kernel_width": round(est.h_, 5),
                     "kl": round(est.kl_divergence_, 4)}

    first_in_process = "umap" not in sys.modules
    t0 = time.perf_counter()
    y = UMAP(3, seed=0).fit_transform(x)
    t_first = time.perf_counter() - t0
    t_warm = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = UMAP(3, seed=0).fit_transform(x)
        t_warm = min(t_warm, time.perf_counter() - t0)
    out["umap3"] = {"seconds": round(t_warm, 2), "trustworthiness": trust(x, y)}
    if first_in_process:  # only the process's first fit pays numba's compilation
        out["umap3"]["seconds_first_fit_in_process"] = round(t_first, 2)

    ws = Workspace(work / f"ws-{name}")
    parts = {"dataset": name, "model": "bench"}
    layout, hit = cached_layout(ws, parts, images, texts, "dosnes", seed=0)
    assert not hit
    t_hit = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        again, hit = cached_layout(ws, parts, images, texts, "dosnes", seed=0)
        t_hit = min(t_hit, time.perf_counter() - t0)
        assert hit and np.array_equal(again.image_xy, layout.image_xy)
    out["cache"] = {"miss_seconds": round(layout.seconds, 2), "hit_seconds": round(t_hit, 4)}

    d, u = out["dosnes"], out["umap3"]
    compile_note = (f"{u['seconds_first_fit_in_process']:.1f} s with numba compile; "
                    if "seconds_first_fit_in_process" in u else "")
    print(f"{name:10} {len(x):5} points  DOSNES {d['seconds']:6.2f} s (T {d['trustworthiness']:.3f}, "
          f"{d['iterations']} steps, {d['sinkhorn_rounds']} Sinkhorn rounds)   UMAP-3D {u['seconds']:6.2f} s "
          f"({compile_note}T {u['trustworthiness']:.3f})   cache hit {t_hit * 1000:.1f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000, help="synthetic pairs (default 1000 = 2000 points)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per method; the best counts (default 3)")
    ap.add_argument("--no-real", action="store_true", help="skip the real CLIP features even when present")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "projection.json"))
    args = ap.parse_args()
    import torch

    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="mmviz-bench-") as tmp:
        images, texts = gapped_pairs(args.pairs)
        results.append(run("synthetic", images, texts, args.repeats, Path(tmp)))
        real = None if args.no_real else real_pairs()
        if real is not None:
            results.append(run("clip-coco", *real, args.repeats, Path(tmp)))
    main_row = results[0]
    goals = {"dosnes_2000_points_under_20s": main_row["points"] == 2000 and main_row["dosnes"]["seconds"] < 20,
             "cache_hit_under_0.5s": all(r["cache"]["hit_seconds"] < 0.5 for r in results)}
    report = {"benchmark": "projection",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
              "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "results": results, "goals": goals}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
