"""Transforms page: how long one slider step takes on a 5,000-pair set.

Data: 5,000 seeded synthetic image-caption pairs, 512-d, shaped like CLIP's (a modality gap;
bench/projection.py's gapped_pairs), imported as precomputed vectors into a fresh workspace.
The page runs in Streamlit's AppTest (the same script run as the server does; the browser's
drawing is not included):
  cold    the first run of the page with empty caches: before and after metrics, the
          Gap-axis layout, the transform: the baseline;
  step    each later slider step (Collapse strength, Shift lambda, Corrupt sigma): only
          the transform, its placement and the after metrics rerun. Goal: about a second
          (median step < 1.5 s);
and the ratio cold / median step.

    .venv/bin/python bench/transforms.py [--pairs 5000]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from projection import gapped_pairs  # noqa: E402  (bench/projection.py)
from report import write_report  # noqa: E402  (bench/report.py)

STEPS = {  # (transform radio label, slider key, values stepped through)
    "collapse strength": ("Collapse", "tf_strength", [0.75, 0.5, 0.25, 0.0, 1.0]),
    "shift lambda": ("Shift", "tf_lam", [0.2, 0.4, 0.6, -0.2, 1.0]),
    "corrupt sigma": ("Corrupt", "tf_sigma", [0.05, 0.1, 0.2, 0.3, 0.0]),
}


def timed_run(at) -> float:
    t0 = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(at.exception)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transforms.json"))
    args = ap.parse_args()
    import torch
    from streamlit.testing.v1 import AppTest

    from mmviz.store import Workspace

    with tempfile.TemporaryDirectory(prefix="mmviz-bench-") as tmp:
        home = Path(tmp) / "home"
        os.environ["MMVIZ_HOME"] = str(home)
        ws = Workspace(home)
        images, texts = gapped_pairs(args.pairs)
        np.save(Path(tmp) / "pairs.npy", np.stack([images, texts]))
        ws.import_path(Path(tmp) / "pairs.npy", "bench")
        (home / ".demo-offered").touch()

        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=600)
        at.run()
        at.switch_page("views/transforms.py")
        cold = timed_run(at)
        steps: dict[str, list[float]] = {}
        for name, (label, key, values) in STEPS.items():
            at.radio(key="tf_kind").set_value(label)
            timed_run(at)  # the first run of a transform draws its slider
            steps[name] = []
            for v in values:
                at.slider(key=key).set_value(v)
                steps[name].append(round(timed_run(at), 3))
            print(f"{name:18} steps {', '.join(f'{s:.2f}' for s in steps[name])} s", flush=True)
    every = [s for v in steps.values() for s in v]
    median = statistics.median(every)
    print(f"cold first run {cold:.2f} s; slider step median {median:.2f} s, worst {max(every):.2f} s; "
          f"cold / step = {cold / median:.1f}x")
    report = {"benchmark": "transforms", "pairs": args.pairs, "dim": 512, "projection": "gap2",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
              "torch": torch.__version__, "cold_first_run_s": round(cold, 3), "steps_s": steps,
              "step_median_s": round(median, 3), "step_worst_s": round(max(every), 3),
              "ratio_cold_over_step": round(cold / median, 2),
              "goals": {"step_about_1s": median < 1.5}}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
