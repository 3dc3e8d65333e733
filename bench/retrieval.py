"""Exact top-k retrieval speed: mmviz.retrieval.topk (torch, faiss) against plain numpy.

Data: --queries (1,000) query rows and --keys (100,000) key rows, 512-d, seeded random unit
vectors (float32). Each method finds the 10 keys of highest cosine for every query and, as it
must for arbitrary rows, normalises them itself. Best of --repeats, after one untimed call:
  numpy   the baseline a user would write: normalise, the whole Q x K score matrix, a full
          argsort of each row, the first k columns;
  torch   topk(backend="torch"): chunked over queries (at most retrieval.BLOCK scores at a
          time), torch.topk per chunk; goal: under 1 s;
  faiss   topk(backend="faiss"): IndexFlatIP (exact) on the normalised rows, when faiss is
          importable (else null).
Ratios numpy_s / torch_s and numpy_s / faiss_s come from the same run. The three should find
the same neighbours: the fraction of (query, rank) entries whose index equals numpy's is
reported (float32 rounding may swap near-ties). Prints the numbers and writes
bench/results/retrieval.json with the goal true/false.

    .venv/bin/python bench/retrieval.py [--keys 100000] [--queries 1000] [--k 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz import retrieval  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(q: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """The plain way: normalise, all Q x K scores at once, a full argsort per row."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return np.argsort(-(q @ keys.T), axis=1)[:, :k]


def timed(f, repeats: int) -> tuple[float, object]:
    """(best of `repeats` timed calls, in seconds; the result of an untimed first call, which
    also takes the one-off costs: imports, first allocations, faiss's thread pool)."""
    out = f()
    return min(timeit.repeat(f, number=1, repeat=repeats)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000, help="key rows (default 100000)")
    ap.add_argument("--queries", type=int, default=1000, help="query rows (default 1000)")
    ap.add_argument("--d", type=int, default=512, help="dimensions (default 512)")
    ap.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per method; the best counts (default 3)")
    ap.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "retrieval.json"))
    args = ap.parse_args()
    import torch

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    keys, queries = unit_rows(args.keys, args.d, rng), unit_rows(args.queries, args.d, rng)

    t_numpy, ref = timed(lambda: numpy_topk(queries, keys, args.k), args.repeats)
    t_torch, (_, idx_torch) = timed(lambda: retrieval.topk(queries, keys, args.k, backend="torch",
                                                          device=args.device), args.repeats)
    t_faiss = agree_faiss = faiss_version = faiss_threads = None
    if retrieval.faiss_available():
        import faiss

        faiss_version, faiss_threads = faiss.__version__, faiss.omp_get_max_threads()
        t_faiss, (_, idx_faiss) = timed(lambda: retrieval.topk(queries, keys, args.k, backend="faiss"), args.repeats)
        agree_faiss = float((idx_faiss == ref).mean())
    agree_torch = float((idx_torch == ref).mean())

    what = f"top-{args.k} of {args.queries} queries over {args.keys} x {args.d} keys"
    print(f"{what}, best of {args.repeats}")
    print(f"  numpy argsort (baseline) {t_numpy:8.3f} s")
    print(f"  mmviz torch (chunked)    {t_torch:8.3f} s  {t_numpy / t_torch:6.1f}x  same indices {agree_torch:.4f}")
    if t_faiss is None:
        print("  faiss                    not installed (pip install faiss-cpu)")
    else:
        print(f"  mmviz faiss (FlatIP)     {t_faiss:8.3f} s  {t_numpy / t_faiss:6.1f}x  same indices {agree_faiss:.4f}")
    default_size = (args.keys, args.queries, args.d, args.k) == (100_000, 1000, 512, 10)  # what the goal is for
    goals = {"torch_under_1s": default_size and t_torch < 1.0}
    report = {
        "benchmark": "retrieval", "what": what,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                   f"{faiss_threads} faiss threads",
        "device": str(retrieval._device(args.device)), "torch": torch.__version__, "numpy": np.__version__,
        "faiss": faiss_version,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "keys": args.keys, "queries": args.queries, "d": args.d, "k": args.k, "repeats": args.repeats,
        "seconds": {"numpy": round(t_numpy, 4), "torch": round(t_torch, 4),
                    "faiss": None if t_faiss is None else round(t_faiss, 4)},
        "ratio_numpy_over_torch": round(t_numpy / t_torch, 2),
        "ratio_numpy_over_faiss": None if t_faiss is None else round(t_numpy / t_faiss, 2),
        "same_indices_as_numpy": {"torch": agree_torch, "faiss": agree_faiss},
        "goals": goals,
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
