"""mmviz finetune and runs: fine-tune a model on a dataset (also under torchrun) and manage the runs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..store import Workspace
from .common import EXIT_OK, EXIT_USAGE, err, output_options, print_table


def _finetune_config(args) -> dict:
    """The FinetuneConfig fields given on the command line (each option is named after its field)."""
    from dataclasses import fields

    from ..finetune.config import FinetuneConfig

    d = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig)
         if f.name != "dataset" and getattr(args, f.name, None) is not None}
    if args.noise_on:
        d["noise_modalities"] = tuple(m.strip() for m in args.noise_on.split(",") if m.strip())
    return d


def cmd_finetune(ws: Workspace, args) -> int:
    """New run (NAME and settings) or --resume RUN; under torchrun, process 0 creates the run
    folder and tells the others its name."""
    from ..finetune import distributed
    from ..finetune.config import FinetuneConfig, create_run, preflight, read_config, runs_dir
    from ..finetune.train import Cancelled, run
    from ..transforms import metric_table

    if (args.name is None) == (args.resume is None):
        print("mmviz finetune: give a dataset NAME for a new run, or --resume RUN", file=sys.stderr)
        return EXIT_USAGE
    folder = None
    if args.resume is not None:
        folder = Path(args.resume)
        if not folder.is_absolute() and not folder.exists():
            folder = runs_dir(ws) / args.resume
        if not (folder / "config.json").exists():
            return err(f"no run {args.resume} (looked in {folder}); `mmviz runs` lists them")
        config = read_config(folder)
    else:
        if not ws.exists(args.name):
            return err(f"no dataset {args.name!r} in {ws.home}; `mmviz list` shows the datasets")
        from ..models import ModelSpecError, ModelUnavailable

        try:
            config = FinetuneConfig(dataset=args.name, **_finetune_config(args))
            preflight(ws, config)
        except (TypeError, ValueError, ModelSpecError, ModelUnavailable) as e:
            return err(str(e))
    rank, world_size, _ = distributed.setup_from_env(config.device)
    if folder is None:
        name = [create_run(ws, config).name if rank == 0 else None]
        if world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(name, src=0)
        folder = runs_dir(ws) / name[0]
    main = rank == 0
    if main:
        print(f"run {folder.name}: {config.loss} on {config.dataset} under {config.model}, {config.steps} steps of "
              f"{config.batch_size} ({world_size} process{'es' * (world_size > 1)}); log in {folder}", flush=True)
    bar = None
    if main and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc="fine-tuning", unit="step", file=sys.stderr,
                   disable=not sys.stderr.isatty() and not os.environ.get("MMVIZ_PROGRESS"))

    def progress(row: dict) -> None:
        if row["kind"] == "step":
            if bar is not None:
                bar.update(row["step"] - bar.n)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            elif row["step"] % 50 == 0 or row["step"] == row["steps"]:
                print(f"step {row['step']}/{row['steps']}: loss {row['loss']:.4f}", flush=True)
        else:
            print(f"step {row['step']}: validation R@1 image->text {row['val_i2t_r1']:.3f}, text->image "
                  f"{row['val_t2i_r1']:.3f}, gap {row['val_gap']:.3f}", flush=True)

    try:
        result = run(ws, folder, progress if main else None)
    except Cancelled as e:
        print(f"mmviz: {e}; resume with: mmviz finetune --resume {folder.name}", file=sys.stderr)
        return 130
    except (KeyError, ValueError) as e:
        return err(e.args[0] if isinstance(e, KeyError) else str(e))
    finally:
        if bar is not None:
            bar.close()
    if not main:
        return EXIT_OK
    table = metric_table(result["before"], result["after"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
        return EXIT_OK
    print(f"\nvalidation split ({result['val_images']} images, {result['val_captions']} captions), "
          f"before -> after {config.steps} steps:")
    print_table(["METRIC", "BEFORE", "AFTER", "CHANGE"],
                 [[r.metric, f"{r.before:.4f}", f"{r.after:.4f}", f"{r.change:+.4f}"] for r in table.itertuples()],
                 right=(1, 2, 3))
    print(f"fine-tuned model: {result['model_spec']}")
    return EXIT_OK


def cmd_runs(ws: Workspace, args) -> int:
    from ..finetune.runs import cancel, list_runs

    runs = list_runs(ws)
    if args.cancel:
        hit = [r for r in runs if r["id"] == args.cancel]
        if not hit:
            return err(f"no run {args.cancel}; `mmviz runs` lists them")
        cancel(hit[0]["folder"])
        print(f"asked run {args.cancel} to stop")
        return EXIT_OK
    if args.json:
        print(json.dumps([{**{k: v for k, v in r.items() if k not in ("folder", "config")},
                           "folder": str(r["folder"]), "config": r["config"].__dict__} for r in runs], indent=2, default=str))
        return EXIT_OK
    if not runs:
        print(f"no fine-tuning runs in {ws.home}")
        return EXIT_OK
    print_table(["RUN", "STATE", "STEP", "LOSS", "DATASET", "MODEL"],
                 [[r["id"], r["state"], f"{r['step']}/{r['steps']}", r["config"].loss, r["config"].dataset,
                   r["config"].model] for r in runs], right=(2,))
    return EXIT_OK


def register(sub) -> None:
    """Add finetune and runs to the subparsers `sub`."""
    from ..finetune import LOSSES, TRAINABLE, UNIMODAL  # torch-free: the parser must not load torch

    s = sub.add_parser("finetune", help="fine-tune a model on a dataset (contrastive, m2-mix, C3 noise) and compare",
                       description="Fine-tune with the CLIP loss or m2-mix on the dataset's train split, checkpointing "
                                   "to <home>/runs/RUN (resume a killed run with --resume RUN), then print the "
                                   "validation metrics before and after and save the model as an open_clip folder "
                                   "(usable as local-dir:<home>/runs/RUN/model). Runs under torchrun too: "
                                   "torchrun --nproc_per_node N -m mmviz.cli finetune NAME ...")
    s.add_argument("name", nargs="?", help="dataset name (for a new run)")
    s.add_argument("--resume", metavar="RUN", help="continue a run (its id or folder) from its last checkpoint")
    s.add_argument("--model", help="model spec to start from (default builtin:shapes)")
    s.add_argument("--loss", choices=LOSSES, help="clip (plain InfoNCE, default) or m2mix")
    s.add_argument("--trainable", choices=TRAINABLE, help="proj (output projections), last (last --last-blocks "
                                                          "blocks of each tower) or all (default)")
    s.add_argument("--last-blocks", type=int)
    s.add_argument("--steps", type=int, help="optimiser steps (default 200)")
    s.add_argument("--batch-size", type=int, help="global batch (default 128)")
    s.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    s.add_argument("--warmup", type=int, help="warm-up steps (default 20)")
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--grad-clip", type=float)
    s.add_argument("--temperature", type=float, help="fix the temperature (default: learn CLIP's logit scale)")
    s.add_argument("--seed", type=int)
    s.add_argument("--val-fraction", type=float, help="share of images held out for before/after (default 0.2)")
    s.add_argument("--eval-every", type=int, help="steps between validation passes (default: each epoch)")
    s.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 50)")
    s.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best there is)")
    s.add_argument("--m2-alpha", type=float, help="m2-mix: lam ~ Beta(alpha, alpha) (default 0.5)")
    s.add_argument("--m2-weight", type=float, help="m2-mix: weight of its term (default 1)")
    s.add_argument("--m2-temperature", type=float, help="m2-mix: its own fixed temperature (default: CLIP's)")
    s.add_argument("--m2-decay", type=float, help="m2-mix: weight multiplied by this each epoch (default 1)")
    s.add_argument("--unimodal", choices=UNIMODAL, help="add uni-modal mixes: image, text or both (default none)")
    s.add_argument("--unimodal-alpha", type=float, help="uni-modal mixes: Beta(alpha, alpha) (default 2)")
    s.add_argument("--unimodal-weight", type=float)
    s.add_argument("--noise", type=float, help="C3 noise: Gaussian sigma on the embeddings while training (default 0)")
    s.add_argument("--noise-on", metavar="MODALITIES", help="which embeddings get noise: text (default), image or image,text")
    output_options(s, "print the result as JSON", "no progress bar")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("runs", help="list fine-tuning runs (or cancel one)")
    s.add_argument("--cancel", metavar="RUN", help="ask a running run to stop (it keeps its last checkpoint)")
    output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_runs)
