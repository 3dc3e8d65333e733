"""Fine-tuning speed: training steps per second of the builtin model at batch 128, per loss.

Data: a shapes-world set of 1,000 scenes imported into a fresh workspace. Each loss runs the
real trainer (`mmviz.finetune.train.run`, everything trainable, no validation passes or
checkpoints inside the timed window) for --steps steps; the first --warmup steps (image
decoding into the in-memory cache, allocator warm-up) are left out of the timing.
  clip          plain InfoNCE: the baseline
  m2mix         + the m2-mix term (one slerp and a second B x B logit matrix per side)
  m2mix+uni     + both uni-modal mixes
  clip+noise    InfoNCE with C3 noise on the text embeddings
Reported: seconds per step, steps/s, samples/s and each loss's step time as a ratio to clip's,
all measured in this run, and the loss alone (forward and backward on given embeddings) for
clip and m2mix at B=128, D=128 and B=1024, D=512. With --ddp it also times `torchrun --nproc_per_node 2` (Gloo on
CPU) for clip at the same global batch.

    .venv/bin/python bench/finetune.py [--steps 40] [--warmup 5] [--ddp]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import write_report  # noqa: E402  (bench/report.py)

LOSSES = {
    "clip": {"loss": "clip"},
    "m2mix": {"loss": "m2mix"},
    "m2mix+uni": {"loss": "m2mix", "unimodal": "both"},
    "clip+noise": {"loss": "clip", "noise": 0.126},
}


def step_seconds(folder: Path, warmup: int) -> float:
    from mmviz.run_folder import read_metrics

    rows = read_metrics(folder, "step")
    t = np.array([r["seconds"] for r in rows])
    return float((t[-1] - t[warmup - 1]) / (len(t) - warmup))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ddp", action="store_true", help="also time two Gloo processes under torchrun")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune.json"))
    args = ap.parse_args()
    import torch

    from mmviz.builtin import make_demo
    from mmviz.finetune.config import FinetuneConfig, create_run
    from mmviz.finetune.losses import FinetuneLoss, LossConfig
    from mmviz.finetune.train import run
    from mmviz.store import Workspace

    home = Path(tempfile.mkdtemp(prefix="mmviz-bench-ft-"))
    ws = Workspace(home)
    make_demo(ws, n=1000, name="shapes-1000")
    common = dict(dataset="shapes-1000", steps=args.steps, batch_size=args.batch, eval_every=10 ** 9,
                  checkpoint_every=10 ** 9, warmup=5)
    results = {}
    for name, loss in LOSSES.items():
        folder = create_run(ws, FinetuneConfig(**common, **loss))
        run(ws, folder)
        s = step_seconds(folder, args.warmup)
        results[name] = {"seconds_per_step": round(s, 4), "steps_per_second": round(1 / s, 3),
                         "samples_per_second": round(args.batch / s, 1)}
        print(f"{name:12s} {s * 1000:7.1f} ms/step  {1 / s:6.2f} steps/s  {args.batch / s:7.1f} samples/s", flush=True)
    base = results["clip"]["seconds_per_step"]
    for name in results:
        results[name]["ratio_to_clip"] = round(results[name]["seconds_per_step"] / base, 3)

    if args.ddp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        threads = max(1, torch.get_num_threads() // 2)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "mmviz.cli", "--home", str(home), "finetune", "shapes-1000",
               "--steps", str(args.steps), "--batch-size", str(args.batch), "--eval-every", str(10 ** 9),
               "--checkpoint-every", str(10 ** 9), "--warmup", "5", "--json", "-q"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        result = json.loads(out[out.index("{"):])
        s = step_seconds(Path(result["model_spec"][len("local-dir:"):]).parent, args.warmup)
        results["clip, 2 Gloo processes"] = {"seconds_per_step": round(s, 4), "steps_per_second": round(1 / s, 3),
                                             "samples_per_second": round(args.batch / s, 1),
                                             "ratio_to_clip": round(s / base, 3), "threads_per_process": threads}
        print(f"clip, 2 Gloo processes ({threads} thread each): {s * 1000:.1f} ms/step ({s / base:.2f}x one process)")

    # the loss alone (forward + backward on given embeddings): what m2-mix adds, without the towers
    loss_only = {}
    for b, d in ((args.batch, 128), (1024, 512)):
        x = torch.nn.functional.normalize(torch.randn(b, d), dim=-1).requires_grad_()
        y = torch.nn.functional.normalize(torch.randn(b, d) + 0.5, dim=-1).requires_grad_()
        for name in ("clip", "m2mix"):
            fn = FinetuneLoss(LossConfig(loss=name))
            times = []
            for i in range(25):
                t0 = time.perf_counter()
                loss, _ = fn(x, y, torch.tensor(30.0), generator=torch.Generator().manual_seed(i))
                loss.backward()
                times.append(time.perf_counter() - t0)
            loss_only[f"{name} B={b} D={d}"] = round(statistics.median(times[5:]) * 1000, 3)
        ratio = loss_only[f"m2mix B={b} D={d}"] / loss_only[f"clip B={b} D={d}"]
        print(f"loss only, B={b} D={d}: clip {loss_only[f'clip B={b} D={d}']:.2f} ms, "
              f"m2mix {loss_only[f'm2mix B={b} D={d}']:.2f} ms ({ratio:.2f}x)")
    m2 = results["m2mix"]["ratio_to_clip"]
    print(f"m2-mix overhead: {m2:.2f}x the plain InfoNCE step")
    write_report(args.out, {
        "benchmark": "finetune",
        "model": "builtin:shapes (all parameters trained)",
        "batch_size": args.batch, "steps_timed": args.steps - args.warmup,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "results": results,
        "loss_only_ms": loss_only,
        "m2mix_overhead_ratio": m2,
        "goals": {"m2mix overhead under 1.5x": m2 < 1.5},
    })


if __name__ == "__main__":
    main()
