"""The `mmviz` command line: import, list, show, delete datasets; embed, measure, search,
transform, score captions; attach VQA questions and train answer heads; launch the app."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .data import DataFormatError, ImportLimits
from .store import Workspace

APP_MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> int:
    print(f"mmviz: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


class _Bar:
    """tqdm progress bar on stderr (rate and ETA), silent when stderr is not a terminal."""

    def __init__(self, desc: str, quiet: bool):
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="img", file=sys.stderr,
                            disable=not sys.stderr.isatty() and not os.environ.get("MMVIZ_PROGRESS"))
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_import(ws: Workspace, args) -> int:
    bar = _Bar("checking images", args.quiet)
    try:
        limits = ImportLimits.from_env()
        if args.max_pixels:
            limits.max_pixels = args.max_pixels
        res = ws.import_path(args.path, args.name, copy_images=args.copy, images_dir=args.images,
                             captions_file=args.captions, model_name=args.model_name, limits=limits, progress=bar)
    except (DataFormatError, ValueError, OSError) as e:  # OSError: unreadable file, disk full, ...
        return _err(str(e))
    finally:
        bar.close()
    r, ds = res.report, res.dataset
    verb = {"created": "imported", "updated": "re-imported (replaced previous version)",
            "unchanged": "already imported, unchanged"}[res.status]
    print(f"{ds.name}: {verb}. {r.summary()}")
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    limit = None if args.verbose else 20
    for s in r.skipped[:limit]:
        print(f"  skipped {s}")
    if limit and len(r.skipped) > limit:
        print(f"  ... and {len(r.skipped) - limit} more (see: mmviz show {ds.name} --skipped)")
    return EXIT_OK


def cmd_list(ws: Workspace, args) -> int:
    rows = ws.list()
    if args.json:
        print(json.dumps([{k: m[k] for k in ("name", "format", "pairs", "captions", "images", "vector_model", "dim", "created", "source")}
                          for m in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(f"no datasets in {ws.home} (add one: mmviz import PATH --name NAME)", file=sys.stderr)
        return EXIT_OK
    _print_table(["NAME", "PAIRS", "CAPTIONS", "IMAGES", "VECTORS", "FORMAT", "CREATED"],
                 [[m["name"], str(m["pairs"]), str(m["captions"]), str(m["images"]),
                   f"{m['vector_model']} ({m['dim']}-d)" if m.get("vector_model") else "-",
                   m["format"], m["created"]] for m in rows])
    return EXIT_OK


def cmd_show(ws: Workspace, args) -> int:
    try:
        ds = ws.open(args.name)
    except KeyError as e:
        return _err(e.args[0])
    m = ds.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    print(f"name:      {m['name']}")
    print(f"source:    {m['source']} ({m['format']})")
    print(f"pairs:     {m['pairs']} ({m['captions']} captions, {m['images']} images, {m['images_stored']})")
    if m.get("vector_model"):
        print(f"vectors:   {m['vector_model']}, {m['dim']}-d")
    if m.get("extras"):
        print(f"columns:   {', '.join(m['extras'])}")
    print(f"created:   {m['created']}")
    print(f"location:  {ds.path}")
    rep = ds.report
    print(f"report:    {rep.summary()}")
    for w in rep.warnings:
        print(f"warning:   {w}")
    if args.skipped:
        for s in rep.skipped:
            print(f"  skipped {s}")
    t = ds.table()
    if args.rows:
        print()
        for _, row in t.head(args.rows).iterrows():
            caps = " | ".join(row["captions"])
            print(f"{row['id']}\t{caps}")
    return EXIT_OK


def cmd_delete(ws: Workspace, args) -> int:
    status = EXIT_OK
    for name in args.names:
        try:
            ws.delete(name)
            print(f"deleted {name}")
        except (KeyError, ValueError) as e:
            status = _err(e.args[0])
    return status


def cmd_app(ws: Workspace, args) -> int:
    if not APP_MAIN.is_file():
        return _err(f"app not found at {APP_MAIN}; run mmviz from a source checkout (pip install -e .)")
    env = dict(os.environ, MMVIZ_HOME=str(ws.home))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        # Others can reach the app: do not let them import arbitrary paths of this machine.
        env["MMVIZ_LOCAL_PATHS"] = "0"
    try:
        max_mb = args.max_upload_mb or ImportLimits.from_env().max_upload_mb
    except ValueError as e:
        return _err(str(e))
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_MAIN),
           "--server.address", args.host, "--server.port", str(args.port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.maxUploadSize", str(max_mb)]
    print(f"mmviz app on http://{args.host}:{args.port} (workspace {ws.home}); Ctrl-C stops it", file=sys.stderr)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def cmd_embed(ws: Workspace, args) -> int:
    from tqdm import tqdm

    from .embed import embed_dataset
    from .models import ModelSpecError, ModelUnavailable

    try:
        ds = ws.open(args.name)
    except KeyError as e:
        return _err(e.args[0])
    bars: dict[str, tqdm] = {}

    def progress(done: int, total: int, stage: str) -> None:
        if args.quiet:
            return
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=f"embedding {stage}", unit=stage[:-1] if stage == "images" else "cap",
                               file=sys.stderr)
        bars[stage].update(done - bars[stage].n)

    try:
        emb = embed_dataset(ws, ds, args.model, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, progress=progress)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        return _err(str(e))
    finally:
        for b in bars.values():
            b.close()
    print(f"{ds.name} under {emb.model}: {len(emb.ids)} images, {len(emb.text)} captions, {emb.dim}-d; "
          f"embedded {emb.computed['images']} images and {emb.computed['captions']} captions now, "
          f"{emb.cached['images']} and {emb.cached['captions']} from the cache, in {emb.seconds:.1f} s")
    print(f"cache: {emb.cache_path}")
    for id_, why in emb.skipped[:20]:
        print(f"  skipped {id_}: {why}")
    return EXIT_OK


class _Fail(Exception):
    """A command cannot go on: the message is for the user (exit 1)."""


def _dataset_embeddings(ws: Workspace, args, embed_missing: bool):
    """(dataset, Embeddings) of args.name under args.model. What the cache lacks is embedded
    first (with a progress bar) when `embed_missing`, else it is an error naming the command
    that embeds it. Raises _Fail."""
    from .embed import embed_dataset, stored_embeddings
    from .models import ModelSpecError, ModelUnavailable

    try:
        ds = ws.open(args.name)
        emb = stored_embeddings(ws, ds, args.model)
        if emb is None and not embed_missing:
            raise _Fail(f"{ds.name} is not embedded under {args.model} yet; run first: "
                        f"mmviz embed {ds.name} --model {args.model}")
        if emb is None:
            bar = _Bar("embedding", args.quiet or args.json)
            emb = embed_dataset(ws, ds, args.model, progress=lambda done, total, stage: bar(done, total))
            bar.close()
    except KeyError as e:
        raise _Fail(e.args[0]) from None
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        raise _Fail(str(e)) from None
    return ds, emb


def cmd_gap(ws: Workspace, args) -> int:
    from . import geometry

    try:
        ds, emb = _dataset_embeddings(ws, args, embed_missing=True)
    except _Fail as e:
        return _err(str(e))
    metrics = geometry.all_metrics(emb.image, emb.paired_text, seed=args.seed)
    if args.json:
        print(json.dumps({"dataset": ds.name, "model": emb.model, "pairs": len(emb.ids), "dim": emb.dim,
                          "metrics": metrics}, indent=2))
        return EXIT_OK
    print(f"{ds.name} under {emb.model}: {len(emb.ids)} pairs, {emb.dim}-d")
    width = max(len(geometry.METRICS[k][0]) for k in metrics)
    for key, value in metrics.items():
        label, meaning = geometry.METRICS[key]
        print(f"  {label:<{width}}  {value:10.4f}  {meaning}")
    return EXIT_OK


def _query_vector(emb, text: str):
    """The text query under the model that made `emb`'s vectors. Raises _Fail."""
    from .models import ModelSpecError, ModelUnavailable, load_model
    from .retrieval import text_query

    try:
        q = text_query(load_model(emb.model), text)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        raise _Fail(f"a text query needs the model that made the vectors, {emb.model}, and it cannot be "
                    f"loaded: {e}") from None
    if q.shape[-1] != emb.dim:
        raise _Fail(f"{emb.model} makes {q.shape[-1]}-d vectors but the dataset's are {emb.dim}-d")
    return q


def cmd_search(ws: Workspace, args) -> int:
    from .retrieval import topk

    try:
        ds, emb = _dataset_embeddings(ws, args, embed_missing=False)
        if emb.model != args.model:  # a set of imported vectors answers whatever model is asked for
            raise _Fail(f"{ds.name} holds imported vectors from {emb.model}, not {args.model}: a text query "
                        f"must be embedded by the model that made them (--model {emb.model}, if mmviz can "
                        "load it)")
        q = _query_vector(emb, args.query)
    except _Fail as e:
        return _err(str(e))
    first_caption = {}
    for caption, owner in zip(emb.captions, emb.text_owner):
        first_caption.setdefault(int(owner), caption)
    rows = []
    if not args.captions:
        scores, idx = topk(q, emb.image, args.k)
        rows += [{"rank": r + 1, "score": float(s), "kind": "image", "id": emb.ids[i],
                  "caption": first_caption.get(int(i), "")} for r, (s, i) in enumerate(zip(scores, idx))]
    if not args.images:
        scores, idx = topk(q, emb.text, args.k)
        rows += [{"rank": r + 1, "score": float(s), "kind": "caption", "id": emb.ids[emb.text_owner[i]],
                  "caption": emb.captions[i]} for r, (s, i) in enumerate(zip(scores, idx))]
    if args.json:
        print(json.dumps({"dataset": ds.name, "model": emb.model, "query": args.query, "results": rows}, indent=2))
        return EXIT_OK
    print(f"{ds.name} under {emb.model}: nearest to {args.query!r} (cosine)")
    _print_table(["RANK", "SCORE", "KIND", "ID", "CAPTION"],
                 [[str(r["rank"]), f"{r['score']:.3f}", r["kind"], r["id"], r["caption"]] for r in rows])
    return EXIT_OK


def cmd_transform(ws: Workspace, args) -> int:
    from .transforms import evaluate, make, metric_table

    if args.collapse:
        name, params, what = "collapse", {}, "collapse"
    elif args.corrupt is not None:
        name, params, what = "corrupt", {"sigma": args.corrupt, "seed": args.seed}, f"corrupt (sigma {args.corrupt})"
    else:
        name, params, what = "shift", {"lam": args.shift}, f"shift (lambda {args.shift})"
    try:
        ds, emb = _dataset_embeddings(ws, args, embed_missing=True)
        images, texts = make(name, **params).fit(emb.image, emb.text).transform(emb.image, emb.text)
        before = evaluate(emb.image, emb.text, emb.text_owner, seed=args.seed)
        after = evaluate(images, texts, emb.text_owner, seed=args.seed)
    except (_Fail, ValueError) as e:  # ValueError: an image without a caption, a bad sigma
        return _err(str(e))
    table = metric_table(before, after)
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2))
        return EXIT_OK
    print(f"{ds.name} under {emb.model}: {what}, fitted on {len(emb.ids)} images and {len(emb.text)} captions "
          "(nothing stored is changed)")
    _print_table(["METRIC", "BEFORE", "AFTER", "CHANGE", "MEANING"],
                 [[r.metric, f"{r.before:.4f}", f"{r.after:.4f}", f"{r.change:+.4f}", r.meaning]
                  for r in table.itertuples()], right=(1, 2, 3))
    return EXIT_OK


def _records(df) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN -> null)."""
    return json.loads(df.to_json(orient="records", force_ascii=False))


def _num(x: float, digits: int) -> str:
    """A number for a table cell; "-" where it is undefined (NaN)."""
    return "-" if x != x else f"{x:.{digits}f}"


def cmd_score(ws: Workspace, args) -> int:
    from .candidates import METRICS, demo_candidates, load_candidates, match_images, score_candidates
    from .models import ModelSpecError, ModelUnavailable

    skipped: list[tuple[int, str]] = []
    notes: list[str] = []
    try:
        ws.open(args.name)  # an unknown dataset is said before the file is read
        if args.candidates:
            cands, skipped = load_candidates(args.candidates)
            notes += cands.attrs.get("warnings", [])
        ds, emb = _dataset_embeddings(ws, args, embed_missing=True)
        if args.demo:
            cands = demo_candidates(ds, emb)
        else:
            cands, unmatched = match_images(cands, ds, emb)
            skipped = sorted(skipped + unmatched)
            if cands.empty:
                first = "; ".join(f"line {n}: {why}" for n, why in unmatched[:3])
                raise _Fail(f"no candidate in {args.candidates} matched an image of {ds.name} ({first})")
        try:
            res = score_candidates(emb, cands, prefix=args.prefix)
        except (ModelSpecError, ModelUnavailable) as e:
            raise _Fail(f"scoring encodes the candidates with the model that made the vectors, {emb.model}, and "
                        f"it cannot be loaded: {e}") from None
    except KeyError as e:
        return _err(e.args[0])
    except (_Fail, DataFormatError, ValueError, OSError) as e:
        return _err(str(e))
    notes += res.warnings
    if args.json:
        print(json.dumps({"dataset": ds.name, "model": emb.model, "prefix": res.prefix,
                          "leaderboard": _records(res.leaderboard),
                          "agreement": None if res.agreement is None else _records(res.agreement),
                          "per_sample": _records(res.per_sample), "skipped": [list(s) for s in skipped],
                          "warnings": notes}, indent=2, ensure_ascii=False))
        return EXIT_OK
    n, k = len(res.per_sample), len(res.leaderboard)
    print(f"{ds.name} under {emb.model}: {n} candidate{'s' * (n != 1)} from {k} system{'s' * (k != 1)}, "
          f"judged against {res.n_references} reference captions (prefix {res.prefix!r})")
    _print_table(["SYSTEM", "N", "MID", "CLIP-S", "RefCLIP-S", "PMI", "HUMAN"],
                 [[r.system, str(r.n), _num(r.mid, 2), _num(r.clip_s, 4), _num(r.refclip_s, 4), _num(r.pmi_mean, 2),
                   _num(r.human, 3)] for r in res.leaderboard.itertuples()], right=(1, 2, 3, 4, 5, 6))
    if res.agreement is not None:
        print(f"\nagreement with the human scores ({int(res.per_sample['human'].notna().sum())} judged candidates)")
        _print_table(["METRIC", "N", "KENDALL-TAU-B", "KENDALL-TAU-C", "ROC-AUC", "PAIRS", "PAIRWISE-ACC"],
                     [[METRICS[r.metric], str(r.n), _num(r.kendall_tau_b, 4), _num(r.kendall_tau_c, 4),
                       _num(r.roc_auc, 4), str(r.pairs), _num(r.pairwise_accuracy, 4)]
                      for r in res.agreement.itertuples()], right=(1, 2, 3, 4, 5, 6))
    print("\nwhere PMI and CLIP-S disagree most (percentile ranks among all candidates)")
    _print_table(["LINE", "SYSTEM", "CLIP-S", "CLIP-S-PCT", "PMI", "PMI-PCT", "CAPTION"],
                 [[str(r.line), r.system, _num(r.clip_s, 4), _num(r.clip_s_pct, 2), _num(r.pmi, 2), _num(r.pmi_pct, 2),
                   r.caption] for r in res.disagreements.head(10).itertuples()], right=(0, 2, 3, 4, 5))
    for n, why in skipped[:20]:
        print(f"  skipped line {n}: {why}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more skipped lines (see --json)", file=sys.stderr)
    for w in notes:
        print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def _print_table(header: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> None:
    """Columns aligned to their widest cell (the last one is not padded); `right`: columns
    aligned right (numbers)."""
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r[:-1], widths))]
        print("  ".join(cells + [r[-1]]).rstrip())


def cmd_models(ws: Workspace, args) -> int:
    from .models import KNOWN_SPECS, weights_status

    for spec in KNOWN_SPECS:
        present, where = weights_status(spec)
        print(f"{'present' if present else 'missing':8} {spec:32} {where}")
    return EXIT_OK


def cmd_builtin_train(ws: Workspace, args) -> int:
    from tqdm import tqdm

    from . import builtin

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
    from .vqa import builtin as vqa_builtin

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    m = vqa_builtin.train_builtin(args.out, seed=args.seed, epochs=args.epochs, progress=say)
    acc = m["val_accuracy"]
    types = list(m["n_val_by_type"])
    print(f"wrote {args.out} in {m['wall_seconds']:.0f} s; validation accuracy ({m['questions']['val']} questions):")
    _print_table(["HEAD", "OVERALL", *[t.upper() for t in types]],
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


def cmd_vqa_questions(ws: Workspace, args) -> int:
    from .vqa.questions import attach

    if args.annotations and not args.images:
        return _err("VQA v2 questions (--annotations) need the COCO images folder too: --images DIR")
    try:
        ds = ws.open(args.name)
        rep = attach(ws, ds, args.file, annotations=args.annotations, images=args.images, seed=args.seed)
    except KeyError as e:
        return _err(e.args[0])
    except (DataFormatError, ValueError, OSError) as e:
        return _err(str(e))
    print(f"{rep.summary()}; written to {rep.path}")
    for what, rows in (("skipped", rep.skipped), ("unmatched", rep.unmatched)):
        for line, why in rows[:20]:
            print(f"  {what} line {line}: {why}")
        if len(rows) > 20:
            print(f"  ... and {len(rows) - 20} more {what} rows")
    return EXIT_OK


def _vqa_features(ws: Workspace, ds, loaded, examples, quiet: bool, word_inputs: bool = False):
    """The examples (image = dataset id) with their image files, and their cached tokens."""
    from .vqa.data import FeatureCache, VQAExample

    with_files = []
    for ex in examples:
        path = ds.image_path(ex.image)
        if path is None:
            raise _Fail(f"image {ex.image} of {ds.name} has no file (a set of imported vectors cannot train a "
                        "VQA head: it needs the images' patch tokens)")
        with_files.append(VQAExample(str(path), ex.question, ex.answers, ex.question_type, ex.answer, ex.line))
    bars: dict[str, _Bar] = {}

    def progress(done: int, total: int, stage: str) -> None:
        bars.setdefault(stage, _Bar(f"{loaded.name} {stage} tokens", quiet))(done, total)

    try:
        return FeatureCache(ws.home, loaded.fingerprint, word_inputs=word_inputs).features(loaded, with_files, progress)
    finally:
        for b in bars.values():
            b.close()


def cmd_vqa_train(ws: Workspace, args) -> int:
    from .models import ModelSpecError, ModelUnavailable, load_model
    from .vqa.builtin import save_head
    from .vqa.questions import question_splits, run_dir
    from .vqa.train import TrainConfig, train

    if args.head != "ban" and (args.grid_coords or args.attended_xy):
        return _err(f"--grid-coords and --attended-xy are options of the ban head, not {args.head}")
    try:
        ds = ws.open(args.name)
        splits = question_splits(ws, ds)
        if not splits or not (splits[0] or splits[1]):
            raise _Fail(f"{ds.name} has no VQA questions; attach some first: mmviz vqa questions {ds.name} FILE")
        train_ex, val_ex = splits
        if not train_ex or not val_ex:
            raise _Fail(f"{ds.name}'s questions have {len(train_ex)} training and {len(val_ex)} validation rows; "
                        "both splits need some (attach them again: mmviz vqa questions, split column train/val)")
        try:
            loaded = load_model(args.model)
        except (ModelSpecError, ModelUnavailable, ValueError) as e:
            raise _Fail(f"model {args.model} cannot be loaded: {e}") from None
        f_train = _vqa_features(ws, ds, loaded, train_ex, args.quiet, args.word_inputs)
        f_val = _vqa_features(ws, ds, loaded, val_ex, args.quiet, args.word_inputs)
    except KeyError as e:
        return _err(e.args[0])
    except (_Fail, DataFormatError, ValueError) as e:  # ValueError: e.g. a model without patch tokens
        return _err(str(e))
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
        return _err(str(e))
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
    _print_table(["TYPE", "N", args.head.upper(), "MAJORITY"], rows, right=(1, 2, 3))
    print(f"saved {folder}")
    return EXIT_OK


def _finetune_config(args) -> dict:
    """The FinetuneConfig fields given on the command line (each option is named after its field)."""
    from dataclasses import fields

    from .finetune.train import FinetuneConfig

    d = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig)
         if f.name != "dataset" and getattr(args, f.name, None) is not None}
    if args.noise_on:
        d["noise_modalities"] = tuple(m.strip() for m in args.noise_on.split(",") if m.strip())
    return d


def cmd_finetune(ws: Workspace, args) -> int:
    """New run (NAME and settings) or --resume RUN; under torchrun, process 0 creates the run
    folder and tells the others its name."""
    from .finetune import distributed
    from .finetune.train import Cancelled, FinetuneConfig, create_run, read_config, run, runs_dir
    from .transforms import metric_table

    if (args.name is None) == (args.resume is None):
        print("mmviz finetune: give a dataset NAME for a new run, or --resume RUN", file=sys.stderr)
        return EXIT_USAGE
    folder = None
    if args.resume is not None:
        folder = Path(args.resume)
        if not folder.is_absolute() and not folder.exists():
            folder = runs_dir(ws) / args.resume
        if not (folder / "config.json").exists():
            return _err(f"no run {args.resume} (looked in {folder}); `mmviz runs` lists them")
        config = read_config(folder)
    else:
        if not ws.exists(args.name):
            return _err(f"no dataset {args.name!r} in {ws.home}; `mmviz list` shows the datasets")
        from .finetune.train import preflight
        from .models import ModelSpecError, ModelUnavailable

        try:
            config = FinetuneConfig(dataset=args.name, **_finetune_config(args))
            preflight(ws, config)
        except (TypeError, ValueError, ModelSpecError, ModelUnavailable) as e:
            return _err(str(e))
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
        return _err(e.args[0] if isinstance(e, KeyError) else str(e))
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
    _print_table(["METRIC", "BEFORE", "AFTER", "CHANGE"],
                 [[r.metric, f"{r.before:.4f}", f"{r.after:.4f}", f"{r.change:+.4f}"] for r in table.itertuples()],
                 right=(1, 2, 3))
    print(f"fine-tuned model: {result['model_spec']}")
    return EXIT_OK


def cmd_runs(ws: Workspace, args) -> int:
    from .finetune.runs import cancel, list_runs

    runs = list_runs(ws)
    if args.cancel:
        hit = [r for r in runs if r["id"] == args.cancel]
        if not hit:
            return _err(f"no run {args.cancel}; `mmviz runs` lists them")
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
    _print_table(["RUN", "STATE", "STEP", "LOSS", "DATASET", "MODEL"],
                 [[r["id"], r["state"], f"{r['step']}/{r['steps']}", r["config"].loss, r["config"].dataset,
                   r["config"].model] for r in runs], right=(2,))
    return EXIT_OK


def _dataset_and_model(s: argparse.ArgumentParser,
                       model_help: str = "model spec (default builtin:shapes; a set of imported vectors uses its own)",
                       ) -> None:
    s.add_argument("name", help="dataset name")
    s.add_argument("--model", default="builtin:shapes", help=model_help)


def _output_options(s: argparse.ArgumentParser, json_help: str | None = "machine-readable output",
                    quiet_help: str | None = "no progress bar") -> None:
    """The --json and -q/--quiet switches most commands share (None leaves one out)."""
    if json_help:
        s.add_argument("--json", action="store_true", help=json_help)
    if quiet_help:
        s.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmviz", description="See and fix the geometry of image-text embedding spaces.")
    p.add_argument("--home", help="workspace folder (default: $MMVIZ_HOME or ~/.mmviz)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("import", help="import an image-caption set or precomputed vectors",
                       description="Import a folder (ImageFolder metadata.jsonl/csv, images with .txt captions, "
                                   "clip-retrieval output), a .zip of any of these, a COCO captions JSON, a "
                                   "CSV/TSV/JSONL/Parquet table, or .npy/.npz vectors. Bad rows are skipped and listed.")
    s.add_argument("path", help="file or folder to import")
    s.add_argument("--name", help="dataset name (default: from the path)")
    s.add_argument("--copy", action="store_true", help="copy images into the workspace (zips always are)")
    s.add_argument("--images", metavar="DIR", help="image folder for a COCO JSON or a table")
    s.add_argument("--captions", metavar="FILE", help="captions for .npy/.npz vectors (.txt one per line, or a table)")
    s.add_argument("--model-name", help="name of the model that made precomputed vectors")
    s.add_argument("--max-pixels", type=int, help="refuse images with more pixels (default 89,478,485)")
    s.add_argument("-v", "--verbose", action="store_true", help="list every skipped row")
    _output_options(s, None, "no progress bar")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("list", help="list datasets in the workspace")
    _output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="describe one dataset")
    s.add_argument("name")
    s.add_argument("--rows", type=int, default=5, help="how many pairs to print (default 5)")
    s.add_argument("--skipped", action="store_true", help="list every row skipped at import")
    _output_options(s, "print the manifest as JSON", None)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("delete", help="delete datasets")
    s.add_argument("names", nargs="+", metavar="NAME")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("embed", help="embed a dataset's images and captions with a model (cached)",
                       description="Embed with any open_clip model; only images and captions not yet in the "
                                   "workspace's cache for that model are computed.")
    _dataset_and_model(s, "model spec: builtin:shapes (default), ARCH:TAG (ViT-B-32:laion2b_s34b_b79k), "
                          "ARCH:/path/weights.safetensors, ARCH:random, local-dir:/path, hf-hub:org/repo")
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    s.add_argument("--workers", type=int, help="image decoding processes (default: cores - 1, at most 4)")
    s.add_argument("--device", help="cuda, mps or cpu (default: the best available, or $MMVIZ_DEVICE)")
    _output_options(s, None, "no progress bars")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("gap", help="print modality-gap geometry metrics of a dataset under a model",
                       description="Gap length, paired/unpaired cosine, linear separability, C3 decomposition, "
                                   "uniformity, alignment, relative alignment, effective dimension and Vendi "
                                   "score. Embeds first what the cache does not hold yet.")
    _dataset_and_model(s)
    s.add_argument("--seed", type=int, default=0, help="seed for subsampled metrics (default 0)")
    _output_options(s)
    s.set_defaults(func=cmd_gap)

    s = sub.add_parser("search", help="nearest images and captions to a text query",
                       description="Embed QUERY with the model and print the dataset's nearest images and "
                                   "captions by cosine. The dataset must be embedded under that model first "
                                   "(mmviz embed NAME --model SPEC).")
    _dataset_and_model(s, "model spec (default builtin:shapes); the set must be embedded under it")
    s.add_argument("query", help="free text")
    s.add_argument("-k", type=int, default=10, help="results per kind (default 10)")
    only = s.add_mutually_exclusive_group()
    only.add_argument("--images", action="store_true", help="images only")
    only.add_argument("--captions", action="store_true", help="captions only")
    _output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("transform", help="what a gap-closing transform does to the metrics and recall",
                       description="Fit a transform on the dataset's embeddings (all images and captions), "
                                   "apply it, and print every geometry metric and recall@1/5/10 before and "
                                   "after. Nothing stored is changed. Embeds first what the cache lacks.")
    _dataset_and_model(s)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--collapse", action="store_true", help="C3 collapse: remove each modality's mean")
    which.add_argument("--corrupt", type=float, metavar="SIGMA", help="C3 corrupt: add Gaussian noise of this std")
    which.add_argument("--shift", type=float, metavar="LAMBDA",
                       help="Liang et al.'s shift along the gap direction (the gap's length closes it)")
    s.add_argument("--seed", type=int, default=0, help="seed for the noise and subsampled metrics (default 0)")
    _output_options(s, "the table as a JSON list of rows")
    s.set_defaults(func=cmd_transform)

    s = sub.add_parser("score", help="score candidate captions (CLIP-S, RefCLIP-S, PMI, MID) and rank their systems",
                       description="Score candidate captions for the dataset's images with CLIP-S, RefCLIP-S "
                                   "(against the dataset's captions) and PMI/MID (under a Gaussian fitted on the "
                                   "dataset's pairs); print the systems' leaderboard, the agreement with human "
                                   "scores when the file has them, and where PMI and CLIP-S disagree most. "
                                   "Embeds first what the cache lacks.")
    _dataset_and_model(s)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidates", metavar="FILE",
                       help="CSV/TSV/JSONL with columns image (id or file name), caption, and optionally "
                            "system and human")
    which.add_argument("--demo", action="store_true",
                       help="the shapes demo's ground truth, paraphrase and foil captions (human 1, 1, 0)")
    s.add_argument("--prefix", metavar="TEXT",
                   help="text before every caption (default 'A photo depicts ' for CLIP models, none for "
                        "builtin:shapes; '' for none)")
    _output_options(s, "leaderboard, agreement and per-candidate scores as JSON")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("models", help="list known models and whether their weights are here")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("builtin", help="the builtin model (builtin:shapes)")
    bsub = s.add_subparsers(dest="builtin_command", metavar="COMMAND")
    bsub.required = True
    t = bsub.add_parser("train", help="retrain the builtin model on the shapes world (CPU, ~25 min)",
                        description="Reproduce assets/builtin-shapes/model.safetensors and metrics.json.")
    from .models import BUILTIN_DIR

    t.add_argument("--out", default=str(BUILTIN_DIR), help=f"output folder (default {BUILTIN_DIR})")
    t.add_argument("--steps", type=int, help="optimizer steps (default 2400)")
    t.add_argument("--batch-size", type=int, help="pairs per step (default 128)")
    t.add_argument("--n-train", type=int, help="training scenes (default 20000)")
    t.add_argument("--seed", type=int, help="seed (default 0)")
    _output_options(t, None, "no progress bar")
    t.set_defaults(func=cmd_builtin_train)
    from .vqa.builtin import DEFAULTS as VQA_DEFAULTS, VQA_DIR

    t = bsub.add_parser("train-vqa", help="retrain the builtin model's VQA head on the shapes world (CPU, ~20 min)",
                        description="Reproduce assets/builtin-shapes/vqa/ (the BAN head and metrics.json): trains "
                                    "BAN, concat and Hadamard heads on builtin:shapes tokens of the shapes world "
                                    "and saves BAN.")
    t.add_argument("--out", default=str(VQA_DIR), help=f"output folder (default {VQA_DIR})")
    t.add_argument("--seed", type=int, help=f"seed (default {VQA_DEFAULTS['seed']})")
    t.add_argument("--epochs", type=int, help=f"epochs per head (default {VQA_DEFAULTS['epochs']})")
    _output_options(t, None, "no per-epoch lines")
    t.set_defaults(func=cmd_builtin_train_vqa)

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
    from .vqa.model import HEADS

    t = vsub.add_parser("train", help="train an answer head on a dataset's questions (frozen CLIP tokens, cached)",
                        description="Compute (or reuse) the model's patch and word tokens for the dataset's "
                                    "questions, train a head on the train split, print the validation accuracy "
                                    "per question type each epoch and against the majority answer at the end, and "
                                    "save it under <home>/vqa/NAME/runs/.")
    _dataset_and_model(t, "CLIP model spec whose tokens the head reads (default builtin:shapes)")
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
    _output_options(t, None, "no progress bars")
    t.set_defaults(func=cmd_vqa_train)

    from .finetune.losses import LOSSES, UNIMODAL
    from .finetune.train import TRAINABLE

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
    _output_options(s, "print the result as JSON", "no progress bar")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("runs", help="list fine-tuning runs (or cancel one)")
    s.add_argument("--cancel", metavar="RUN", help="ask a running run to stop (it keeps its last checkpoint)")
    _output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("app", help="launch the browser app (binds to 127.0.0.1 unless --host is given)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--max-upload-mb", type=int, help="largest upload the app accepts (default 2048 MB)")
    s.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ws = Workspace(args.home)
    try:
        return args.func(ws, args)
    except KeyboardInterrupt:
        print("mmviz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mmviz list | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
