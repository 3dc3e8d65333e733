"""mmviz vqa questions / train: attach VQA questions to a dataset and train an answer head."""
from __future__ import annotations

from ..data import DataFormatError
from ..store import Workspace
from .common import EXIT_OK, Bar, Fail, dataset_and_model, err, output_options, print_table


def cmd_vqa_questions(ws: Workspace, args) -> int:
    from ..vqa.questions import attach

    if args.annotations and not args.images:
        return err("VQA v2 questions (--annotations) need the COCO images folder too: --images DIR")
    try:
        ds = ws.open(args.name)
        rep = attach(ws, ds, args.file, annotations=args.annotations, images=args.images, seed=args.seed)
    except KeyError as e:
        return err(e.args[0])
    except (DataFormatError, ValueError, OSError) as e:
        return err(str(e))
    print(f"{rep.summary()}; written to {rep.path}")
    for what, rows in (("skipped", rep.skipped), ("unmatched", rep.unmatched)):
        for line, why in rows[:20]:
            print(f"  {what} line {line}: {why}")
        if len(rows) > 20:
            print(f"  ... and {len(rows) - 20} more {what} rows")
    return EXIT_OK


def _vqa_features(ws: Workspace, ds, loaded, examples, quiet: bool, word_inputs: bool = False):
    """The examples (image = dataset id) with their image files, and their cached tokens."""
    from ..vqa.data import FeatureCache, VQAExample

    with_files = []
    for ex in examples:
        path = ds.image_path(ex.image)
        if path is None:
            raise Fail(f"image {ex.image} of {ds.name} has no file (a set of imported vectors cannot train a "
                        "VQA head: it needs the images' patch tokens)")
        with_files.append(VQAExample(str(path), ex.question, ex.answers, ex.question_type, ex.answer, ex.line))
    bars: dict[str, Bar] = {}

    def progress(done: int, total: int, stage: str) -> None:
        bars.setdefault(stage, Bar(f"{loaded.name} {stage} tokens", quiet))(done, total)

    try:
        return FeatureCache(ws.home, loaded.fingerprint, word_inputs=word_inputs).features(loaded, with_files, progress)
    finally:
        for b in bars.values():
            b.close()


def cmd_vqa_train(ws: Workspace, args) -> int:
    from ..models import ModelSpecError, ModelUnavailable, load_model
    from ..vqa.builtin import save_head
    from ..vqa.questions import question_splits, run_dir
    from ..vqa.train import TrainConfig, train

    if args.head != "ban" and (args.grid_coords or args.attended_xy):
        return err(f"--grid-coords and --attended-xy are options of the ban head, not {args.head}")
    try:
        ds = ws.open(args.name)
        splits = question_splits(ws, ds)
        if not splits or not (splits[0] or splits[1]):
            raise Fail(f"{ds.name} has no VQA questions; attach some first: mmviz vqa questions {ds.name} FILE")
        train_ex, val_ex = splits
        if not train_ex or not val_ex:
            raise Fail(f"{ds.name}'s questions have {len(train_ex)} training and {len(val_ex)} validation rows; "
                        "both splits need some (attach them again: mmviz vqa questions, split column train/val)")
        try:
            loaded = load_model(args.model)
        except (ModelSpecError, ModelUnavailable, ValueError) as e:
            raise Fail(f"model {args.model} cannot be loaded: {e}") from None
        f_train = _vqa_features(ws, ds, loaded, train_ex, args.quiet, args.word_inputs)
        f_val = _vqa_features(ws, ds, loaded, val_ex, args.quiet, args.word_inputs)
    except KeyError as e:
        return err(e.args[0])
    except (Fail, DataFormatError, ValueError) as e:  # ValueError: e.g. a model without patch tokens
        return err(str(e))
    config = TrainConfig(head=args.head, hidden=args.hidden, epochs=args.epochs, seed=args.seed,
                         word_inputs=args.word_inputs, grid_coords=args.grid_coords, attended_xy=args.attended_xy)
    print(f"{ds.name} under {args.model}: {args.head} head, {len(train_ex)} training and {len(val_ex)} validation "
          f"questions, {config.epochs} epoch{'s' * (config.epochs != 1)}")

    def epoch_done(epoch: int, epochs: int, m: dict) -> None:
        types = "  ".join(f"{t or '-'} {a:.3f}" for t, a in m["val_by_type"].items())
        print(f"epoch {epoch}/{epochs}: loss {m['train_loss']:.4f}, val {m['val_accuracy']:.3f}  ({types})", flush=True)

    try:
        result = train(train_ex, val_ex, f_train, f_val, config, progress=epoch_done)
    except ValueError as e:
        return err(str(e))
    options = ("+words" * config.word_inputs + (f"+xy{config.grid_coords:g}" if config.grid_coords > 0 else "")
               + "+att" * config.attended_xy)
    folder = save_head(result, run_dir(ws, ds.name, args.head, loaded.fingerprint, args.seed, options), args.model)
    counts: dict[str, int] = {}
    for ex in val_ex:
        counts[ex.question_type] = counts.get(ex.question_type, 0) + 1
    rows = [[t or "-", str(counts.get(t, 0)), f"{a:.3f}", f"{result.majority_by_type.get(t, 0.0):.3f}"]
            for t, a in result.val_by_type.items()]
    rows.append(["all", str(len(val_ex)), f"{result.val_accuracy:.3f}", f"{result.majority_accuracy:.3f}"])
    print(f"\nvalidation accuracy ({args.head} vs the majority answer per question type)")
    print_table(["TYPE", "N", args.head.upper(), "MAJORITY"], rows, right=(1, 2, 3))
    print(f"saved {folder}")
    return EXIT_OK


def register(sub) -> None:
    """Add vqa (questions, train) to the subparsers `sub`."""
    s = sub.add_parser("vqa", help="visual question answering: attach questions to a dataset, train a head")
    vsub = s.add_subparsers(dest="vqa_command", metavar="COMMAND")
    vsub.required = True
    t = vsub.add_parser("questions", help="attach VQA questions to a dataset (replaces those attached before)",
                        description="Read question-answer rows and attach those whose image is in the dataset "
                                    "(matched by id, then file name). FILE is a CSV/TSV/JSONL/Parquet table with "
                                    "columns image, question, answer and optionally question_type and split "
                                    "(train/val; else a seeded 80/20 split by image), or, with --annotations, a "
                                    "VQA v2 questions JSON.")
    t.add_argument("name", help="dataset name")
    t.add_argument("file", help="triples table, or VQA v2 questions JSON")
    t.add_argument("--annotations", metavar="FILE", help="VQA v2 annotations JSON (FILE is then the questions JSON)")
    t.add_argument("--images", metavar="DIR", help="the COCO images folder VQA v2 questions refer to")
    t.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split when there is no split column")
    t.set_defaults(func=cmd_vqa_questions)
    from ..vqa import HEADS  # torch-free: building the parser must not load torch

    t = vsub.add_parser("train", help="train an answer head on a dataset's questions (frozen CLIP tokens, cached)",
                        description="Compute (or reuse) the model's patch and word tokens for the dataset's "
                                    "questions, train a head on the train split, print the validation accuracy "
                                    "per question type each epoch and against the majority answer at the end, and "
                                    "save it under <home>/vqa/NAME/runs/.")
    dataset_and_model(t, "CLIP model spec whose tokens the head reads (default builtin:shapes)")
    t.add_argument("--head", choices=HEADS, default="ban", help="answer head (default ban)")
    t.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--hidden", type=int, default=128, help="hidden size (default 128)")
    t.add_argument("--word-inputs", action="store_true",
                   help="word features are the last-layer tokens plus the input word embeddings (helps questions "
                        "that hinge on one word such as left/right)")
    t.add_argument("--grid-coords", type=float, default=0.0, metavar="SCALE",
                   help="ban: append each patch's (x, y) times SCALE to its features (8 for the builtin model; "
                        "default 0, off)")
    t.add_argument("--attended-xy", action="store_true", help="ban: the classifier also reads each glimpse's "
                                                             "attended (x, y)")
    output_options(t, None, "no progress bars")
    t.set_defaults(func=cmd_vqa_train)
