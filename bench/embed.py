"""Embedding throughput: mmviz's engine against the plain open_clip loop a user would write.

For each model, on the same JPEG images and captions and the same loaded model:
  baseline  open image, preprocess, batch of 32, encode_image / encode_text, normalise;
  mmviz     embed_dataset on a fresh workspace (cold cache);
  cached    embed_dataset again (everything in the cache).
Each is timed `--repeats` times (best counts), the model loaded once beforehand.
Prints images/s for both, their ratio (goal >= 1.0), and the cached rerun's speed-up
(goal >= 50x), and writes bench/results/embed.json.

    .venv/bin/python bench/embed.py [--n 1024 128] [--repeats 3] [--models builtin:shapes ViT-B-32:random]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmviz import synthetic  # noqa: E402
from mmviz.embed import embed_dataset  # noqa: E402
from mmviz.models import load_model  # noqa: E402
from mmviz.store import Workspace  # noqa: E402


def make_images(folder: Path, n: int, size: int = 256) -> Path:
    """n shapes-world scenes as size x size JPEGs in an ImageFolder with one caption each."""
    from PIL import Image

    scenes = synthetic.make_world(0, 0, n, seed=7)["test"]
    (folder / "images").mkdir(parents=True)
    rows = []
    for s in scenes:
        name = f"images/{s.id}.jpg"
        s.render().resize((size, size), Image.BICUBIC).save(folder / name, quality=90)
        rows.append(json.dumps({"file_name": name, "text": s.captions[0]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def baseline(loaded, paths: list[Path], captions: list[str], batch: int = 32) -> float:
    """The loop from open_clip's README, batched: seconds for all images and captions."""
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = torch.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])
            f = loaded.model.encode_image(x.to(loaded.device, loaded.dtype))
            f = f / f.norm(dim=-1, keepdim=True)
        for i in range(0, len(captions), batch):
            f = loaded.model.encode_text(loaded.tokenizer(captions[i:i + batch]).to(loaded.device))
            f = f / f.norm(dim=-1, keepdim=True)
    return time.perf_counter() - t0


def run(spec: str, n: int, work: Path, repeats: int) -> dict:
    data = make_images(work / f"data-{n}", n) if not (work / f"data-{n}").exists() else work / f"data-{n}"
    loaded = load_model(spec)  # loaded once, outside every timing
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    paths = [data / r["file_name"] for r in rows]
    captions = [r["text"] for r in rows]
    baseline(loaded, paths[:32], captions[:32])  # warm-up: first-call allocations
    # Best of `repeats`, alternating the two, so a busy moment on the machine hits both alike.
    t_base, t_first, t_cached = float("inf"), float("inf"), float("inf")
    for r in range(repeats):
        t_base = min(t_base, baseline(loaded, paths, captions))
        ws = Workspace(work / f"ws-{spec.replace(':', '_').replace('/', '_')}-{r}")
        ds = ws.import_path(data, "bench").dataset  # import (checking images) is not timed
        t0 = time.perf_counter()
        first = embed_dataset(ws, ds, loaded)  # cold cache
        t_first = min(t_first, time.perf_counter() - t0)
        t0 = time.perf_counter()
        second = embed_dataset(ws, ds, loaded)  # everything cached
        t_cached = min(t_cached, time.perf_counter() - t0)
    assert second.computed == {"images": 0, "captions": 0}
    assert np.allclose(first.image, second.image)
    out = {
        "model": spec,
        "images": n,
        "repeats": repeats,
        "baseline_images_per_s": round(n / t_base, 1),
        "mmviz_images_per_s": round(n / t_first, 1),
        "ratio_mmviz_over_baseline": round(t_base / t_first, 3),
        "cached_rerun_s": round(t_cached, 4),
        "cached_speedup": round(t_first / t_cached, 1),
        "goals": {"ratio>=1.0": t_base / t_first >= 1.0, "cached_speedup>=50": t_first / t_cached >= 50},
    }
    print(f"{spec:24} n={n:5}  baseline {out['baseline_images_per_s']:7.1f} img/s   mmviz "
          f"{out['mmviz_images_per_s']:7.1f} img/s   ratio {out['ratio_mmviz_over_baseline']:.2f}   "
          f"cached rerun {t_cached * 1000:.0f} ms ({out['cached_speedup']:.0f}x faster)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1024, 128], help="images per model (one value or one per model)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per variant; the best counts (default 3)")
    ap.add_argument("--models", nargs="+", default=["builtin:shapes", "ViT-B-32:random"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "embed.json"))
    args = ap.parse_args()
    ns = args.n if len(args.n) == len(args.models) else [args.n[0]] * len(args.models)
    import torch

    results = []
    with tempfile.TemporaryDirectory(prefix="mmviz-bench-") as tmp:
        for spec, n in zip(args.models, ns):
            results.append(run(spec, n, Path(tmp), args.repeats))
    report = {"benchmark": "embed", "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
