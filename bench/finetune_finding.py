"""The README's fine-tuning finding: plain contrastive fine-tuning against m2-mix on the
builtin model and the shapes world, the same steps, data and seeds for both.

For each seed, two runs of `mmviz.finetune.train.run` on a 2,000-scene shapes-world set
(20% of the images held out), everything trainable, --steps steps at batch 128, lr 1e-4:
loss "clip" and loss "m2mix" (alpha 0.5, weight 1). Prints and writes the validation
metrics before and after (gap length, uniformity, relative alignment, recall@k) per run and
their mean over seeds.

    .venv/bin/python bench/finetune_finding.py [--steps 300] [--seeds 0 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import write_report  # noqa: E402  (bench/report.py)

KEYS = ("gap_length", "uniformity_union", "uniformity_image", "uniformity_text", "alignment", "relative_alignment",
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune_finding.json"))
    args = ap.parse_args()
    from mmviz.builtin import make_demo
    from mmviz.finetune.config import FinetuneConfig, create_run
    from mmviz.finetune.train import run
    from mmviz.store import Workspace

    ws = Workspace(tempfile.mkdtemp(prefix="mmviz-finding-"))
    make_demo(ws, n=args.scenes, name="shapes")
    runs = []
    for seed in args.seeds:
        for loss in ("clip", "m2mix"):
            config = FinetuneConfig(dataset="shapes", loss=loss, steps=args.steps, batch_size=128, lr=1e-4, seed=seed,
                                    eval_every=10 ** 9, checkpoint_every=100)
            r = run(ws, create_run(ws, config))
            runs.append({"seed": seed, "loss": loss, "before": {k: r["before"][k] for k in KEYS},
                         "after": {k: r["after"][k] for k in KEYS}, "train_seconds": r["train_seconds"]})
            print(f"seed {seed} {loss:6s} " + "  ".join(f"{k} {r['before'][k]:.3f}->{r['after'][k]:.3f}"
                                                       for k in ("gap_length", "uniformity_union",
                                                                 "relative_alignment", "i2t_r1", "t2i_r1")), flush=True)
    mean = {loss: {w: {k: float(np.mean([r[w][k] for r in runs if r["loss"] == loss])) for k in KEYS}
                   for w in ("before", "after")} for loss in ("clip", "m2mix")}
    print(f"\nmean over seeds {args.seeds}, {args.steps} steps:")
    print(f"{'metric':20s} {'before':>8s} {'clip':>8s} {'m2mix':>8s}")
    for k in KEYS:
        print(f"{k:20s} {mean['clip']['before'][k]:8.4f} {mean['clip']['after'][k]:8.4f} {mean['m2mix']['after'][k]:8.4f}")
    write_report(args.out, {"benchmark": "finetune_finding", "scenes": args.scenes, "steps": args.steps,
                            "seeds": args.seeds, "runs": runs, "mean": mean, "goals": {}})


if __name__ == "__main__":
    main()
