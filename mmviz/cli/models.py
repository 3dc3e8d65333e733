"""mmviz models and mmviz builtin train / train-vqa: the models mmviz knows and its builtin one."""
from __future__ import annotations

import sys
from pathlib import Path

from ..store import Workspace
from .common import EXIT_OK, output_options, print_table


def cmd_models(ws: Workspace, args) -> int:
    from ..models import KNOWN_SPECS, weights_status

    for spec in KNOWN_SPECS:
        present, where = weights_status(spec)
        print(f"{'present' if present else 'missing':8} {spec:32} {where}")
    return EXIT_OK


def cmd_builtin_train(ws: Workspace, args) -> int:
    from tqdm import tqdm

    from .. import builtin

    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("batch_size", args.batch_size),
                                   ("n_train", args.n_train)) if v is not None}
    bar = tqdm(total=overrides.get("steps", builtin.DEFAULTS["steps"]), desc="training builtin:shapes",
               unit="step", file=sys.stderr, disable=args.quiet)

    def progress(step: int, steps: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    metrics = builtin.train(args.out, progress=progress, **overrides)
    bar.close()
    r = metrics["test_recall"]
    print(f"wrote {Path(args.out) / 'model.safetensors'} in {metrics['train_seconds']:.0f} s; test "
          f"i2t R@1/5/10 {r['i2t']['R@1']:.3f}/{r['i2t']['R@5']:.3f}/{r['i2t']['R@10']:.3f}, "
          f"t2i {r['t2i']['R@1']:.3f}/{r['t2i']['R@5']:.3f}/{r['t2i']['R@10']:.3f}")
    return EXIT_OK


def cmd_builtin_train_vqa(ws: Workspace, args) -> int:
    from ..vqa import builtin as vqa_builtin

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    m = vqa_builtin.train_builtin(args.out, seed=args.seed, epochs=args.epochs, progress=say)
    acc = m["val_accuracy"]
    types = list(m["n_val_by_type"])
    print(f"wrote {args.out} in {m['wall_seconds']:.0f} s; validation accuracy ({m['questions']['val']} questions):")
    print_table(["HEAD", "OVERALL", *[t.upper() for t in types]],
                 [[h, f"{acc[h]['overall']:.3f}", *[f"{acc[h][t]:.3f}" for t in types]] for h in acc],
                 right=tuple(range(1, len(types) + 2)))
    g = m["grounding"]["overall"]
    print(f"BAN attention on the object's box (questions about one object, n {g['n']}): more than half the mass "
          f"for {g['fraction_most_on_box']:.3f}, mean mass {g['mean_mass_on_box']:.3f}, chance {g['chance']:.3f}")
    rel = m["grounding"].get("relation")
    if rel:
        per = ", ".join(f"glimpse {i}: subject {x['subject']:.2f} / object {x['object']:.2f}"
                        for i, x in enumerate(rel["glimpses"], 1))  # numbered as on the VQA page
        print(f"BAN attention on relation questions (n {rel['n']}): {per}; chance {rel['chance']['subject']:.2f} / "
              f"{rel['chance']['object']:.2f}")
    return EXIT_OK


def cmd_builtin_train_captioner(ws: Workspace, args) -> int:
    from ..captioner import builtin as cap_builtin
    from ..captioner.variants import LABELS

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    seeds = tuple(args.seeds) if args.seeds else None
    m = cap_builtin.train_builtin(args.out, progress=say, epochs=args.epochs, n_train=args.n_train, seeds=seeds)
    print(f"wrote {args.out} in {m['seconds']:.0f} s; {m['test']['images']} test images, mean of seeds "
          f"{', '.join(map(str, m['settings']['seeds']))}:")
    print_table(["VARIANT", "BLEU-4", "CIDER-D", "ROUGE-L", "CLIP-S", "MID", "EXACT"],
                [[LABELS[v], *[f"{r[k]:.3f}" for k in cap_builtin.TABLE]] for v, r in m["mean"].items()],
                right=(1, 2, 3, 4, 5, 6))
    return EXIT_OK


def register(sub) -> None:
    """Add models and builtin (train, train-vqa, train-captioner) to the subparsers `sub`."""
    s = sub.add_parser("models", help="list known models and whether their weights are here")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("builtin", help="the builtin model (builtin:shapes)")
    bsub = s.add_subparsers(dest="builtin_command", metavar="COMMAND")
    bsub.required = True
    t = bsub.add_parser("train", help="retrain the builtin model on the shapes world (CPU, ~25 min)",
                        description="Reproduce assets/builtin-shapes/model.safetensors and metrics.json.")
    from ..models import BUILTIN_DIR

    t.add_argument("--out", default=str(BUILTIN_DIR), help=f"output folder (default {BUILTIN_DIR})")
    t.add_argument("--steps", type=int, help="optimizer steps (default 2400)")
    t.add_argument("--batch-size", type=int, help="pairs per step (default 128)")
    t.add_argument("--n-train", type=int, help="training scenes (default 20000)")
    t.add_argument("--seed", type=int, help="seed (default 0)")
    output_options(t, None, "no progress bar")
    t.set_defaults(func=cmd_builtin_train)
    from ..vqa.builtin import DEFAULTS as VQA_DEFAULTS, VQA_DIR

    t = bsub.add_parser("train-vqa", help="retrain the builtin model's VQA head on the shapes world (CPU, ~20 min)",
                        description="Reproduce assets/builtin-shapes/vqa/ (the BAN head and metrics.json): trains "
                                    "BAN, concat and Hadamard heads on builtin:shapes tokens of the shapes world "
                                    "and saves BAN.")
    t.add_argument("--out", default=str(VQA_DIR), help=f"output folder (default {VQA_DIR})")
    t.add_argument("--seed", type=int, help=f"seed (default {VQA_DEFAULTS['seed']})")
    t.add_argument("--epochs", type=int, help=f"epochs per head (default {VQA_DEFAULTS['epochs']})")
    output_options(t, None, "no per-epoch lines")
    t.set_defaults(func=cmd_builtin_train_vqa)

    captioners = BUILTIN_DIR / "captioners"
    t = bsub.add_parser("train-captioner", help="retrain the builtin text-only captioners, all five variants, and "
                                                "their table (CPU, ~25 min)",
                        description="Reproduce assets/builtin-shapes/captioners/: trains the c1, collapse, corrupt, "
                                    "c3 and paired captioners on builtin:shapes text vectors of the shapes world with "
                                    "two seeds, scores them on 1,000 test images and saves seed 0 of each.")
    t.add_argument("--out", default=str(captioners), help=f"output folder (default {captioners})")
    t.add_argument("--epochs", type=int, help="epochs per captioner (default 5)")
    t.add_argument("--n-train", type=int, help="training scenes, 4 captions each (default 4000)")
    t.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1; the first is saved)")
    output_options(t, None, "no progress lines")
    t.set_defaults(func=cmd_builtin_train_captioner)
