"""Placing the rest of a large set into a UMAP 2-D layout fitted on a sample: kNN placement
(mmviz.projection.KnnPlacement; torch and faiss, k = 5 / 10 / 15) against umap-learn's own
`transform`.

Data, each stacked images + captions and fitted the way project_pairs fits them (UMAP 2-D,
n_neighbors 15, min_dist 0.1, cosine, seed 0, on a seeded sample of the stacked rows):
  clip-coco  the real CLIP features of Liang et al. 2022 (500 COCO pairs, 1,000 points; from
             ../shared/data/modality-gap-features, skipped when absent): fit on a seeded
             500, place the other 500;
  clustered  synthetic, --pairs image-caption pairs x 512 (default 100,000: 200,000 points),
             stored as a float16 .npy and read memory-mapped, as the app's stores will be:
             100 cluster centres on the sphere, 10 sub-centres each, a pair shares its
             centre, sub-centre and concept, each vector adds its own noise, captions are
             shifted by one constant gap vector and renormalised. Fit on 20,000 (UMAP's
             DEFAULT_MAX_FIT), place a seeded --place of the other rows (default 20,000).
For each way of placing: seconds per 100,000 placed points (best of --repeats; umap-learn's
transform after one untimed warm-up call, which compiles its numba code), and
trustworthiness (sklearn, k = 10, cosine) of a seeded 2,000 of the placed points against
their own vectors ("placed"), and of those 2,000 together with 2,000 fitted points
("placed + fitted": does a placed point land among its true neighbours in the fitted
layout). The reference: trustworthiness of 2,000 fitted points. Weightings of the
neighbours' positions (softmax of cosine / temperature, inverse rank, uniform) are
compared on the same neighbours at k = 10.
Then project_pairs("umap2") end to end over the whole float16 memmap in a child process:
its seconds per stage and its own memory's peak (RssAnon) against the input's size; with
--big-pairs 1000000 also over 2M points (default methods pca2 and dosnes).
Writes bench/results/placement.json.

    .venv/bin/python bench/placement.py [--pairs 100000] [--place 20000] [--repeats 2] [--no-end-to-end]
                                        [--big-pairs 1000000 [--big-methods pca2,dosnes]]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz.projection import UMAP, KnnPlacement, Rows, fit_rows, knn_positions, unit_rows  # noqa: E402
from mmviz.retrieval import faiss_available, topk  # noqa: E402
from geometry import best  # noqa: E402  (bench/geometry.py)
from report import write_report  # noqa: E402  (bench/report.py)

REAL = ROOT.parent / "shared" / "data" / "modality-gap-features" / "features_clip.npy"
TEMPERATURES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def clustered_pairs(path: Path, pairs: int, d: int = 512, centres: int = 100, subs: int = 10,
                    seed: int = 0, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Write `pairs` synthetic image and caption rows (float16) to path-images.npy and
    path-texts.npy, chunk by chunk, and return both memory-mapped. Shares of a vector's
    squared norm before the gap: centre 0.4, sub-centre 0.2, the pair's concept 0.2, own
    noise 0.2; the gap vector has norm 0.8 (captions only), then every row is renormalised."""
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    centre = unit(rng.normal(size=(centres, d)))
    sub = unit(rng.normal(size=(centres, subs, d)))
    gap = 0.8 * unit(rng.normal(size=d))
    out = {}
    for name in ("images", "texts"):
        out[name] = np.lib.format.open_memmap(f"{path}-{name}.npy", mode="w+", dtype=np.float16, shape=(pairs, d))
    for s in range(0, pairs, chunk):
        n = min(chunk, pairs - s)
        c, j = rng.integers(0, centres, n), rng.integers(0, subs, n)
        concept = np.sqrt(0.4) * centre[c] + np.sqrt(0.2) * sub[c, j] + np.sqrt(0.2 / d) * rng.normal(size=(n, d))
        noise = lambda: np.sqrt(0.2 / d) * rng.normal(size=(n, d))  # noqa: E731
        out["images"][s:s + n] = unit(concept + noise())
        out["texts"][s:s + n] = unit(unit(concept + noise()) + gap)
    for a in out.values():
        a.flush()
    return (np.load(f"{path}-images.npy", mmap_mode="r"), np.load(f"{path}-texts.npy", mmap_mode="r"))


def real_pairs() -> tuple[np.ndarray, np.ndarray] | None:
    if not REAL.is_file():
        return None
    f = np.load(REAL, allow_pickle=False).astype(np.float32)
    return unit_rows(f[0]), unit_rows(f[1])


def trust(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return round(float(trustworthiness(x, y, n_neighbors=10, metric="cosine")), 4)


def weighted(scores: np.ndarray, idx: np.ndarray, positions: np.ndarray, how: str) -> np.ndarray:
    """Other weightings of the neighbours' positions, for comparison with knn_positions."""
    if how == "inverse rank":
        w = np.broadcast_to(1.0 / np.arange(1, idx.shape[1] + 1), idx.shape)
    else:  # uniform
        w = np.ones(idx.shape)
    return (np.einsum("nk,nkc->nc", w, positions[idx]) / w.sum(1, keepdims=True)).astype(np.float32)


def measure(name: str, images, texts, n_fit: int, n_place: int, repeats: int, umap_rows: int) -> dict:
    rows = Rows(images, texts)
    n = len(rows)
    idx = fit_rows(n, n_fit, 0)
    rest = np.setdiff1d(np.arange(n), idx)
    rng = np.random.default_rng(1)
    placed_idx = np.sort(rng.choice(rest, min(n_place, len(rest)), replace=False))
    sample, x_place = rows.take(idx), unit_rows(rows.take(placed_idx))
    est = UMAP(2, seed=0, placement="umap")
    t0 = time.perf_counter()
    fitted = est.fit_transform(sample)
    t_fit = time.perf_counter() - t0
    m = min(2000, len(placed_idx))
    judge = np.sort(rng.choice(len(placed_idx), m, replace=False))  # placed points to judge
    ref = np.sort(rng.choice(len(idx), min(2000, len(idx)), replace=False))  # fitted points
    sample_u = unit_rows(sample)
    out = {"data": name, "points": n, "fitted": len(idx), "placed_timed": len(placed_idx), "judged": m,
           "umap_fit_seconds": round(t_fit, 1),
           "reference_trustworthiness_fitted": trust(sample_u[ref], fitted[ref]), "methods": []}

    def judge_layout(method: str, seconds: float, rows_timed: int, y: np.ndarray, **extra) -> None:
        yj = y[judge] if len(y) == len(placed_idx) else None
        row = {"method": method, **extra,
               "seconds_per_100k": None if seconds is None else round(seconds / rows_timed * 1e5, 2),
               "trust_placed": trust(x_place[judge], yj) if yj is not None else None,
               "trust_placed_with_fitted": trust(np.vstack([x_place[judge], sample_u[ref]]),
                                                 np.vstack([yj, fitted[ref]])) if yj is not None else None}
        out["methods"].append(row)
        print(f"  {name:10} {method:28} {row['seconds_per_100k'] or 0:8.2f} s/100k  T placed "
              f"{row['trust_placed']}  T placed+fitted {row['trust_placed_with_fitted']}", flush=True)

    # umap-learn's own transform: warm up (numba), then time it on the first umap_rows rows and,
    # when that is all of them, judge it
    est.transform(x_place[:10])
    k_rows = min(umap_rows, len(x_place))
    t, y = best(lambda: est.transform(x_place[:k_rows]), 1)
    judge_layout("umap-learn transform", t, k_rows, y if k_rows == len(x_place) else np.empty((0, 2)))
    if k_rows < len(x_place):  # too slow for them all: judge it on the judged rows alone
        y_judged = np.zeros((len(x_place), 2), dtype=np.float32)
        y_judged[judge] = est.transform(x_place[judge])
        out["methods"][-1]["trust_placed"] = trust(x_place[judge], y_judged[judge])
        out["methods"][-1]["trust_placed_with_fitted"] = trust(np.vstack([x_place[judge], sample_u[ref]]),
                                                               np.vstack([y_judged[judge], fitted[ref]]))
        print(f"    (umap-learn transform timed on {k_rows:,} rows, judged on its own {m:,}: "
              f"T {out['methods'][-1]['trust_placed']} / {out['methods'][-1]['trust_placed_with_fitted']})")

    placement = KnnPlacement(10).fit(sample, fitted)
    backends = ["torch"] + (["faiss"] if faiss_available() else [])
    for backend in backends:
        for k in (5, 10, 15):
            placement.backend, placement.n_neighbors = backend, k
            t, y = best(lambda: placement.transform(x_place), repeats)
            judge_layout(f"kNN {backend} k={k}", t, len(x_place), y, backend=backend, k=k,
                         temperature=placement.temperature)

    # weightings, on the same 10 neighbours
    scores, nn = topk(x_place, sample_u, 10, backend="torch")
    for temp in TEMPERATURES:
        judge_layout(f"k=10 softmax T={temp}", None, 1, knn_positions(scores, nn, fitted, temp), k=10)
    for how in ("inverse rank", "uniform"):
        judge_layout(f"k=10 {how}", None, 1, weighted(scores, nn, fitted, how), k=10)
    judge_layout("k=1 (nearest only)", None, 1, fitted[nn[:, 0]], k=1)
    return out


def dosnes_placement(images, texts) -> dict:
    """DOSNES fitted on a seeded half, the other half placed on the sphere by KnnPlacement:
    the fit's own kernel (temperature h / 2, the default before) against fixed temperatures."""
    from mmviz.projection import DOSNES

    rows = Rows(images, texts)
    idx = fit_rows(len(rows), len(rows) // 2, 0)
    rest = np.setdiff1d(np.arange(len(rows)), idx)
    sample, x_place = unit_rows(rows.take(idx)), unit_rows(rows.take(rest))
    est = DOSNES(seed=0).fit(sample)
    out = {"data": "clip-coco", "fitted": len(idx), "placed": len(rest), "kernel_width_h": round(est.h_, 4),
           "reference_trustworthiness_fitted": trust(sample, est.embedding_), "methods": []}
    for label, temp in [(f"T = h/2 = {est.h_ / 2:.3f}", est.h_ / 2)] + [(f"T = {t}", t) for t in (0.005, 0.01, 0.02)]:
        y = KnnPlacement(10, temp, sphere=True).fit(sample, est.embedding_).transform(x_place)
        row = {"method": f"kNN k=10 {label}", "temperature": round(temp, 4), "trust_placed": trust(x_place, y),
               "trust_placed_with_fitted": trust(np.vstack([x_place, sample]), np.vstack([y, est.embedding_]))}
        out["methods"].append(row)
        print(f"  DOSNES     {row['method']:28} T placed {row['trust_placed']}  T placed+fitted "
              f"{row['trust_placed_with_fitted']}", flush=True)
    return out


END_TO_END = """
import json, sys, threading, time
import numpy as np
sys.path.insert(0, {root!r})
from mmviz.projection import project_pairs
import mmviz.retrieval, sklearn.manifold, torch, umap  # noqa: F401  (imported before the baseline: their memory is not the projection's)
{peak}
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
images, texts = np.load({images!r}, mmap_mode="r"), np.load({texts!r}, mmap_mode="r")
base = anon_mb()
stages, current, peaks, running = {{}}, ["start"], {{}}, [True]
def sample():  # the process's own (anonymous) memory every 20 ms, highest per stage
    while running[0]:
        peaks[current[0]] = max(peaks.get(current[0], 0.0), anon_mb())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def progress(done, total, stage):
    current[0] = stage
    stages.setdefault(stage, [time.perf_counter(), 0])[1] = time.perf_counter()
t0 = time.perf_counter()
layout = project_pairs(images, texts, {method!r}, seed=0, progress=progress)
seconds = time.perf_counter() - t0
running[0] = False
print(json.dumps({{"method": {method!r}, "seconds": round(seconds, 1),
                  "stage_seconds": {{s: round(b - a, 1) for s, (a, b) in stages.items()}},
                  "anon_mb_after_imports": round(base, 1),
                  "anon_peak_mb_by_stage": {{s: round(v, 1) for s, v in peaks.items()}},
                  "peak_rss_mb_incl_mapped_input": round(peak_mb(), 1),
                  "finite": bool(np.isfinite(layout.image_xy).all() and np.isfinite(layout.text_xy).all())}}))
"""

# A child's peak resident memory from its own /proc/self/status (VmHWM): ru_maxrss would
# carry over the parent's peak, since Linux keeps it across fork and exec. VmHWM counts the
# memmapped input's pages too (page cache the kernel can drop), so the sampler above also
# follows RssAnon, the process's own memory.
PEAK = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def end_to_end(images, texts, method: str) -> dict:
    """project_pairs(method) on the float16 memmaps in a fresh process: its time, the peak of
    its own memory per stage against its memory after the imports, and the input's size."""
    code = END_TO_END.format(root=str(ROOT), images=images.filename, texts=texts.filename, peak=PEAK,
                             method=method)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    out["points"] = len(images) + len(texts)
    out["input_float16_mb"] = round((images.nbytes + texts.nbytes) / 2 ** 20, 1)
    out["input_as_float32_mb"] = round(2 * out["input_float16_mb"], 1)
    out["anon_peak_above_imports_mb"] = round(max(out["anon_peak_mb_by_stage"].values())
                                              - out["anon_mb_after_imports"], 1)
    print(f"end to end: project_pairs {method} over {out['points']:,} float16 memmapped points: {out['seconds']} s "
          f"{out['stage_seconds']}; own memory peak {out['anon_peak_above_imports_mb']} MB above the imports "
          f"(by stage: {out['anon_peak_mb_by_stage']}); input {out['input_float16_mb']} MB as float16, "
          f"{out['input_as_float32_mb']} MB as float32", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100_000, help="synthetic pairs (default 100,000 = 200,000 points)")
    ap.add_argument("--place", type=int, default=20_000, help="placed rows timed per method (default 20,000)")
    ap.add_argument("--umap-rows", type=int, default=20_000, help="rows umap-learn's transform is timed on")
    ap.add_argument("--repeats", type=int, default=2, help="timings per kNN method; the best counts")
    ap.add_argument("--no-end-to-end", action="store_true", help="skip the whole-set project_pairs run")
    ap.add_argument("--big-pairs", type=int, default=0, help="also run project_pairs end to end on this many "
                    "synthetic pairs (1,000,000: 2M points, 2 GB of float16 in a temporary folder)")
    ap.add_argument("--big-methods", default="pca2,dosnes", help="methods for --big-pairs (default pca2,dosnes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "placement.json"))
    args = ap.parse_args()
    import torch

    load_before = os.getloadavg()[0]
    results, e2e, dosnes = [], [], None
    real = real_pairs()
    if real is not None:
        results.append(measure("clip-coco", *real, n_fit=500, n_place=500, repeats=args.repeats,
                               umap_rows=args.umap_rows))
        dosnes = dosnes_placement(*real)
    with tempfile.TemporaryDirectory(prefix="mmviz-bench-") as tmp:
        images, texts = clustered_pairs(Path(tmp) / "clustered", args.pairs)
        results.append(measure("clustered", images, texts, n_fit=min(20_000, args.pairs), n_place=args.place, repeats=args.repeats,
                               umap_rows=args.umap_rows))
        if not args.no_end_to_end:
            e2e.append(end_to_end(images, texts, "umap2"))
    if args.big_pairs:  # the scale the app aims at: memory must not grow with the points
        with tempfile.TemporaryDirectory(prefix="mmviz-bench-big-") as tmp:
            images, texts = clustered_pairs(Path(tmp) / "big", args.big_pairs)
            for method in args.big_methods.split(","):
                e2e.append(end_to_end(images, texts, method))
    knn = [m for r in results for m in r["methods"] if m["method"].startswith("kNN torch k=10")]
    umap_t = [m for r in results for m in r["methods"] if m["method"] == "umap-learn transform"]
    goals = {
        "knn_k10_at_least_5x_faster_than_umap_transform": all(
            k["seconds_per_100k"] * 5 <= u["seconds_per_100k"] for k, u in zip(knn, umap_t)),
        "knn_k10_trust_within_0.01_of_umap_transform": all(
            k["trust_placed_with_fitted"] >= u["trust_placed_with_fitted"] - 0.01 for k, u in zip(knn, umap_t)),
    }
    for run in e2e[1:] if not args.no_end_to_end else e2e:  # the 2M runs: memory must not grow with the points
        goals[f"{run['method']}_{run['points']}_own_memory_under_a_quarter_of_the_float32_input"] = (
            run["anon_peak_above_imports_mb"] < run["input_as_float32_mb"] / 4)
    report = {"benchmark": "placement",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "faiss": faiss_available(),
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "results": results, "dosnes_clip_coco": dosnes, "end_to_end": e2e, "goals": goals}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
