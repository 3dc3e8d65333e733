"""mmviz captioner train / runs and mmviz caption: text-only captioners (C3's downstream task)."""
from __future__ import annotations

import json
import sys

from ..store import Workspace
from .common import (EXIT_OK, EXIT_USAGE, Bar, Fail, dataset_and_model, dataset_embeddings, err, output_options,
                     print_table)

# Corpus metrics as `mmviz caption` prints them.
SHOWN = (("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("cider", "CIDEr-D"), ("rouge_l", "ROUGE-L"), ("clip_s", "CLIP-S"),
         ("refclip_s", "RefCLIP-S"), ("mid", "MID"), ("exact_match", "exact match"))


def _settings(args) -> dict:
    return {k: v for k, v in (("variant", args.variant), ("epochs", args.epochs), ("seed", args.seed),
                              ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}


def cmd_captioner_train(ws: Workspace, args) -> int:
    from ..captioner import runs
    from ..captioner.train import Cancelled
    from ..models import ModelSpecError, ModelUnavailable

    if (args.name is None) == (args.resume is None):
        print("mmviz captioner train: give a dataset NAME for a new run, or --resume RUN", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.resume is not None:
            folder = runs.find_run(ws, args.resume)
        else:
            run = runs.CaptionerRun(args.name, args.model, _settings(args))
            runs.preflight(ws, run)  # a clear message before any work
            folder = runs.create_run(ws, run)
    except (TypeError, ValueError, ModelSpecError, ModelUnavailable) as e:
        return err(str(e))
    if not args.quiet:
        print(f"captioner run {folder.name} (resume with: mmviz captioner train --resume {folder.name})",
              file=sys.stderr)
    bar = Bar("training captioner", args.quiet, unit="step")
    embed_bar = Bar("embedding", args.quiet)
    try:
        result = runs.train_run(ws, folder, progress=lambda row: bar(row["step"], row["steps"]),
                                embed_progress=lambda done, total, stage: embed_bar(done, total, stage))
    except Cancelled as e:
        bar.close()
        print(f"mmviz: {e}; resume with: mmviz captioner train --resume {folder.name}", file=sys.stderr)
        return 130
    except (ValueError, ModelSpecError, ModelUnavailable) as e:
        bar.close()
        return err(str(e))
    bar.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    m = result["metrics"]
    print(f"{result['variant']} captioner trained on {result['train_captions']:,} captions of {result['dataset']} "
          f"({result['steps']} steps); test split, {result['test_images']} images:")
    print_table(["METRIC", "VALUE"], [[label, f"{m[k]:.4f}"] for k, label in SHOWN], right=(1,))
    print(f"captioner: {folder / 'captioner'} (mmviz caption {result['dataset']} --captioner {folder.name})")
    return EXIT_OK


def cmd_captioner_runs(ws: Workspace, args) -> int:
    from ..captioner import runs
    from ..finetune.runs import cancel

    found = runs.list_runs(ws, args.name)
    if args.cancel:
        hit = [r for r in found if r["id"] == args.cancel]
        if not hit:
            return err(f"no captioner run {args.cancel}; `mmviz captioner runs` lists them")
        cancel(hit[0]["folder"])
        print(f"asked captioner run {args.cancel} to stop")
        return EXIT_OK
    if args.json:
        print(json.dumps([{"id": r["id"], "state": r["state"], "step": r["step"], "steps": r["steps"],
                           "dataset": r["run"].dataset, "model": r["run"].model, "settings": r["run"].settings,
                           "result": r["result"]} for r in found], indent=2))
        return EXIT_OK
    if not found:
        print(f"no captioner runs in {runs.runs_dir(ws)}")
        return EXIT_OK
    print_table(["RUN", "STATE", "STEP", "VARIANT", "DATASET", "MODEL", "CIDER-D"],
                [[r["id"], r["state"], f"{r['step']}/{r['steps'] or '?'}", r["run"].config().variant, r["run"].dataset,
                  r["run"].model, f"{r['result']['metrics']['cider']:.3f}" if r["result"] else "-"] for r in found],
                right=(2, 6))
    return EXIT_OK


def load_captioner(ws: Workspace, ref: str, tokenizer=None):
    """A builtin variant's name or a run's id/folder -> Captioner (raises ValueError)."""
    from ..captioner import Captioner, VARIANTS, runs
    from ..captioner.builtin import load_builtin

    if ref in VARIANTS:
        return load_builtin(ref, tokenizer)
    folder = runs.find_run(ws, ref)
    if not (folder / "captioner" / "model.safetensors").exists():
        raise ValueError(f"captioner run {folder.name} has not finished: resume it with "
                         f"mmviz captioner train --resume {folder.name}")
    return Captioner.load(folder / "captioner", tokenizer)


def cmd_caption(ws: Workspace, args) -> int:
    from ..candidates import default_prefix
    from ..captioner.evaluate import evaluate
    from ..captioner.runs import data_of, split_of
    from ..embed import encode_texts
    from ..models import ModelSpecError, ModelUnavailable, load_model

    from ..models import resolve

    try:
        captioner = load_captioner(ws, args.captioner)
        # before any embedding: a captioner reads one model's space only
        captioner.check_model(args.model, resolve(args.model, download=False).fingerprint)
        ds, emb = dataset_embeddings(ws, args, embed_missing=True)
        captioner.check_model(emb.model, emb.fingerprint)  # a set of imported vectors brings its own model
        loaded = load_model(emb.model)
        captioner.tokenizer = loaded.tokenizer
        rows = split_of(ds, emb, args.split)
        if args.limit:
            rows = rows[:args.limit]
        data = data_of(emb).subset(rows)
        ev = evaluate(captioner, data, lambda t: encode_texts(loaded, t), default_prefix(emb.model), beam=args.beam)
    except Fail as e:
        return err(str(e))
    except (ValueError, ModelSpecError, ModelUnavailable) as e:
        return err(str(e))
    if args.json:
        print(json.dumps(ev.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    shown = ev.table.head(args.show)
    print_table(["ID", "CLIP-S", "CAPTION", "FIRST REFERENCE"],
                [[r.id, f"{r.clip_s:.3f}", r.caption, r.references[0]] for r in shown.itertuples()], right=(1,))
    if len(ev.table) > len(shown):
        print(f"... {len(ev.table) - len(shown)} more (--show N, or --json for all)")
    print(f"\n{captioner.variant} captioner ({args.captioner}) on {ds.name}, {args.split} split, "
          f"{len(ev.table)} images, {'greedy' if args.beam <= 1 else f'beam {args.beam}'}:")
    print_table(["METRIC", "VALUE"], [[label, f"{ev.corpus[k]:.4f}"] for k, label in SHOWN], right=(1,))
    return EXIT_OK


def register(sub) -> None:
    """Add captioner (train, runs) and caption to the subparsers `sub`."""
    s = sub.add_parser("captioner", help="train text-only captioners (C3: connect, collapse, corrupt) and list them")
    csub = s.add_subparsers(dest="captioner_command", metavar="COMMAND")
    csub.required = True
    t = csub.add_parser("train", help="train a captioner on a dataset's caption embeddings only",
                        description="Train a small caption decoder on the text embeddings of the dataset's captions "
                                    "(train split), with C3's variant, checkpointing to <home>/captioners/RUN "
                                    "(resume a stopped run with --resume RUN), then caption the test split's "
                                    "images from their image embeddings and score the captions.")
    t.add_argument("name", nargs="?", help="dataset name (for a new run)")
    t.add_argument("--model", default="builtin:shapes", help="CLIP model whose text embeddings it reads "
                                                              "(default builtin:shapes)")
    t.add_argument("--variant", choices=("c1", "collapse", "corrupt", "c3", "paired"),
                   help="c1 (connect), collapse, corrupt, c3 (both; default) or paired (trained on image embeddings)")
    t.add_argument("--epochs", type=int, help="passes over the training captions (default 10)")
    t.add_argument("--seed", type=int, help="seed (default 0)")
    t.add_argument("--batch-size", type=int, help="captions per step (default 128)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    t.add_argument("--resume", metavar="RUN", help="continue a run (its id or folder) from its checkpoint")
    output_options(t, "print the result as JSON", "no progress bar")
    t.set_defaults(func=cmd_captioner_train)

    t = csub.add_parser("runs", help="list captioner runs (or cancel one)")
    t.add_argument("name", nargs="?", help="only this dataset's runs")
    t.add_argument("--cancel", metavar="RUN", help="ask a running run to stop (it keeps its checkpoint)")
    output_options(t, "machine-readable output", None)
    t.set_defaults(func=cmd_captioner_runs)

    s = sub.add_parser("caption", help="caption a dataset's images with a captioner and score the captions",
                       description="Caption the images of a split from their image embeddings and print per-image "
                                   "captions with the corpus metrics: BLEU-1..4, CIDEr-D, ROUGE-L against each "
                                   "image's own captions, CLIP-S, RefCLIP-S and MID under the model.")
    dataset_and_model(s, "model spec whose image vectors are captioned (default builtin:shapes)")
    s.add_argument("--captioner", default="c3", metavar="VARIANT|RUN",
                   help="a builtin captioner (c1, collapse, corrupt, c3, paired; default c3) or a run id")
    s.add_argument("--split", default="test", choices=("test", "train", "all"),
                   help="which images (default test: the split a run held out)")
    s.add_argument("--beam", type=int, default=1, help="beam width (default 1: greedy)")
    s.add_argument("--limit", type=int, help="caption at most this many images of the split")
    s.add_argument("--show", type=int, default=10, help="captions printed (default 10; --json prints all)")
    output_options(s, "print {captions: [{id, caption, references}], metrics: {...}}", "no progress bar")
    s.set_defaults(func=cmd_caption)
