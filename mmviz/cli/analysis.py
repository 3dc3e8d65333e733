"""mmviz gap, search, transform, score: measure and query a dataset's embedding space."""
from __future__ import annotations

import json
import sys

from ..data import DataFormatError
from ..store import Workspace
from .common import (EXIT_OK, Bar, Fail, dataset_and_model, dataset_embeddings, err, num, output_options, print_table,
                     records)


def cmd_gap(ws: Workspace, args) -> int:
    from .. import geometry

    try:
        ds, emb = dataset_embeddings(ws, args, embed_missing=True)
    except Fail as e:
        return err(str(e))
    from ..results import metrics as cached_metrics

    bar = Bar("metrics", args.quiet or args.json, unit="stage")
    metrics, _ = cached_metrics(ws.home, emb, seed=args.seed, progress=bar)
    bar.close()
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
    """The text query under the model that made `emb`'s vectors. Raises Fail."""
    from ..models import ModelSpecError, ModelUnavailable, load_model
    from ..queries import text_query

    try:
        q = text_query(load_model(emb.model), text)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        raise Fail(f"a text query needs the model that made the vectors, {emb.model}, and it cannot be "
                    f"loaded: {e}") from None
    if q.shape[-1] != emb.dim:
        raise Fail(f"{emb.model} makes {q.shape[-1]}-d vectors but the dataset's are {emb.dim}-d")
    return q


def cmd_search(ws: Workspace, args) -> int:
    from ..retrieval import topk

    try:
        ds, emb = dataset_embeddings(ws, args, embed_missing=False)
        if emb.model != args.model:  # a set of imported vectors answers whatever model is asked for
            raise Fail(f"{ds.name} holds imported vectors from {emb.model}, not {args.model}: a text query "
                        f"must be embedded by the model that made them (--model {emb.model}, if mmviz can "
                        "load it)")
        q = _query_vector(emb, args.query)
    except Fail as e:
        return err(str(e))
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
    print_table(["RANK", "SCORE", "KIND", "ID", "CAPTION"],
                 [[str(r["rank"]), f"{r['score']:.3f}", r["kind"], r["id"], r["caption"]] for r in rows])
    return EXIT_OK


def recall_queries_arg(value: str) -> int | str:
    """--recall-queries: a positive number or 'all'."""
    import argparse

    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of queries or 'all', got {value!r}")
    return n


def cmd_transform(ws: Workspace, args) -> int:
    from ..derived import transform_parts, transformed
    from ..retrieval import default_queries
    from ..transforms import evaluate, make, metric_table

    if args.collapse:
        name, params, what = "collapse", {}, "collapse"
    elif args.corrupt is not None:
        name, params, what = "corrupt", {"sigma": args.corrupt, "seed": args.seed}, f"corrupt (sigma {args.corrupt})"
    else:
        name, params, what = "shift", {"lam": args.shift}, f"shift (lambda {args.shift})"
    quiet = args.quiet or args.json
    try:
        ds, emb = dataset_embeddings(ws, args, embed_missing=True)
        queries = {None: default_queries(len(emb.ids)), "all": None}.get(args.recall_queries, args.recall_queries)
        bar = Bar("transforming", quiet, unit="row")
        # Stored in the workspace and memory-mapped: a million pairs never sit in memory.
        after_set = transformed(ws.home, transform_parts(emb.key_parts, name, params), make(name, **params),
                                emb.image, emb.text, progress=bar)
        bar.close()
        runs = []
        for label, (images, texts) in (("before", (emb.image, emb.text)), ("after", (after_set.image, after_set.text))):
            bar = Bar(f"recall {label}", quiet, unit="product")
            runs.append(evaluate(images, texts, emb.text_owner, seed=args.seed, recall_queries=queries, progress=bar))
            bar.close()
        before, after = runs
    except (Fail, ValueError) as e:  # ValueError: an image without a caption, a bad sigma
        return err(str(e))
    table = metric_table(before, after)
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2))
        return EXIT_OK
    sampled = (f"; recall@k over a seeded sample of {queries:,} image and {queries:,} caption queries, each "
               "against every key" if queries is not None and queries < max(len(emb.ids), len(emb.text)) else "")
    print(f"{ds.name} under {emb.model}: {what}, fitted on {len(emb.ids)} images and {len(emb.text)} captions "
          f"(nothing stored is changed){sampled}")
    print_table(["METRIC", "BEFORE", "AFTER", "CHANGE", "MEANING"],
                 [[r.metric, f"{r.before:.4f}", f"{r.after:.4f}", f"{r.change:+.4f}", r.meaning]
                  for r in table.itertuples()], right=(1, 2, 3))
    return EXIT_OK

def cmd_score(ws: Workspace, args) -> int:
    from ..candidates import METRICS, demo_candidates, load_candidates, match_images, score_candidates
    from ..models import ModelSpecError, ModelUnavailable

    skipped: list[tuple[int, str]] = []
    notes: list[str] = []
    try:
        ws.open(args.name)  # an unknown dataset is said before the file is read
        if args.candidates:
            cands, skipped = load_candidates(args.candidates)
            notes += cands.attrs.get("warnings", [])
        ds, emb = dataset_embeddings(ws, args, embed_missing=True)
        if args.demo:
            cands = demo_candidates(ds, emb)
        else:
            cands, unmatched = match_images(cands, ds, emb)
            skipped = sorted(skipped + unmatched)
            if cands.empty:
                first = "; ".join(f"line {n}: {why}" for n, why in unmatched[:3])
                raise Fail(f"no candidate in {args.candidates} matched an image of {ds.name} ({first})")
        try:
            res = score_candidates(emb, cands, prefix=args.prefix)
        except (ModelSpecError, ModelUnavailable) as e:
            raise Fail(f"scoring encodes the candidates with the model that made the vectors, {emb.model}, and "
                        f"it cannot be loaded: {e}") from None
    except KeyError as e:
        return err(e.args[0])
    except (Fail, DataFormatError, ValueError, OSError) as e:
        return err(str(e))
    notes += res.warnings
    if args.json:
        print(json.dumps({"dataset": ds.name, "model": emb.model, "prefix": res.prefix,
                          "leaderboard": records(res.leaderboard),
                          "agreement": None if res.agreement is None else records(res.agreement),
                          "per_sample": records(res.per_sample), "skipped": [list(s) for s in skipped],
                          "warnings": notes}, indent=2, ensure_ascii=False))
        return EXIT_OK
    n, k = len(res.per_sample), len(res.leaderboard)
    print(f"{ds.name} under {emb.model}: {n} candidate{'s' * (n != 1)} from {k} system{'s' * (k != 1)}, "
          f"judged against {res.n_references} reference captions (prefix {res.prefix!r})")
    print_table(["SYSTEM", "N", "MID", "CLIP-S", "RefCLIP-S", "PMI", "HUMAN"],
                 [[r.system, str(r.n), num(r.mid, 2), num(r.clip_s, 4), num(r.refclip_s, 4), num(r.pmi_mean, 2),
                   num(r.human, 3)] for r in res.leaderboard.itertuples()], right=(1, 2, 3, 4, 5, 6))
    if res.agreement is not None:
        print(f"\nagreement with the human scores ({int(res.per_sample['human'].notna().sum())} judged candidates)")
        print_table(["METRIC", "N", "KENDALL-TAU-B", "KENDALL-TAU-C", "ROC-AUC", "PAIRS", "PAIRWISE-ACC"],
                     [[METRICS[r.metric], str(r.n), num(r.kendall_tau_b, 4), num(r.kendall_tau_c, 4),
                       num(r.roc_auc, 4), str(r.pairs), num(r.pairwise_accuracy, 4)]
                      for r in res.agreement.itertuples()], right=(1, 2, 3, 4, 5, 6))
    print("\nwhere PMI and CLIP-S disagree most (percentile ranks among all candidates)")
    print_table(["LINE", "SYSTEM", "CLIP-S", "CLIP-S-PCT", "PMI", "PMI-PCT", "CAPTION"],
                 [[str(r.line), r.system, num(r.clip_s, 4), num(r.clip_s_pct, 2), num(r.pmi, 2), num(r.pmi_pct, 2),
                   r.caption] for r in res.disagreements.head(10).itertuples()], right=(0, 2, 3, 4, 5))
    for n, why in skipped[:20]:
        print(f"  skipped line {n}: {why}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more skipped lines (see --json)", file=sys.stderr)
    for w in notes:
        print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def register(sub) -> None:
    """Add gap, search, transform and score to the subparsers `sub`."""
    s = sub.add_parser("gap", help="print modality-gap geometry metrics of a dataset under a model",
                       description="Gap length, paired/unpaired cosine, linear separability, C3 decomposition, "
                                   "uniformity, alignment, relative alignment, effective dimension and Vendi "
                                   "score. Embeds first what the cache does not hold yet.")
    dataset_and_model(s)
    s.add_argument("--seed", type=int, default=0, help="seed for subsampled metrics (default 0)")
    output_options(s)
    s.set_defaults(func=cmd_gap)

    s = sub.add_parser("search", help="nearest images and captions to a text query",
                       description="Embed QUERY with the model and print the dataset's nearest images and "
                                   "captions by cosine. The dataset must be embedded under that model first "
                                   "(mmviz embed NAME --model SPEC).")
    dataset_and_model(s, "model spec (default builtin:shapes); the set must be embedded under it")
    s.add_argument("query", help="free text")
    s.add_argument("-k", type=int, default=10, help="results per kind (default 10)")
    only = s.add_mutually_exclusive_group()
    only.add_argument("--images", action="store_true", help="images only")
    only.add_argument("--captions", action="store_true", help="captions only")
    output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("transform", help="what a gap-closing transform does to the metrics and recall",
                       description="Fit a transform on the dataset's embeddings (all images and captions), "
                                   "apply it, and print every geometry metric and recall@1/5/10 before and "
                                   "after. The dataset is not changed; the transformed vectors are kept in the "
                                   "workspace (derived/). Embeds first what the cache lacks.")
    dataset_and_model(s)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--collapse", action="store_true", help="C3 collapse: remove each modality's mean")
    which.add_argument("--corrupt", type=float, metavar="SIGMA", help="C3 corrupt: add Gaussian noise of this std")
    which.add_argument("--shift", type=float, metavar="LAMBDA",
                       help="Liang et al.'s shift along the gap direction (the gap's length closes it)")
    s.add_argument("--seed", type=int, default=0, help="seed for the noise and subsampled metrics (default 0)")
    s.add_argument("--recall-queries", type=recall_queries_arg, metavar="N",
                   help="recall@k over a seeded sample of N image and N caption queries, each searched against "
                        "every key (default: all when the set has at most 10,000 pairs, else 10,000; 'all' for "
                        "every query: on a million pairs that is 10^12 products, about an hour on 2 cores)")
    output_options(s, "the table as a JSON list of rows")
    s.set_defaults(func=cmd_transform)

    s = sub.add_parser("score", help="score candidate captions (CLIP-S, RefCLIP-S, PMI, MID) and rank their systems",
                       description="Score candidate captions for the dataset's images with CLIP-S, RefCLIP-S "
                                   "(against the dataset's captions) and PMI/MID (under a Gaussian fitted on the "
                                   "dataset's pairs); print the systems' leaderboard, the agreement with human "
                                   "scores when the file has them, and where PMI and CLIP-S disagree most. "
                                   "Embeds first what the cache lacks.")
    dataset_and_model(s)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidates", metavar="FILE",
                       help="CSV/TSV/JSONL with columns image (id or file name), caption, and optionally "
                            "system and human")
    which.add_argument("--demo", action="store_true",
                       help="the shapes demo's ground truth, paraphrase and foil captions (human 1, 1, 0)")
    s.add_argument("--prefix", metavar="TEXT",
                   help="text before every caption (default 'A photo depicts ' for CLIP models, none for "
                        "builtin:shapes; '' for none)")
    output_options(s, "leaderboard, agreement and per-candidate scores as JSON")
    s.set_defaults(func=cmd_score)
