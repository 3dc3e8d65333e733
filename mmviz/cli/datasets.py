"""mmviz import, list, show, delete: the workspace's datasets."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..data import DataFormatError, ImportLimits
from ..store import Workspace, valid_name
from .common import EXIT_OK, Bar, err, output_options, print_table


def dataset_name(value: str) -> str:
    """--name as given: an empty or invalid name is a usage error (exit 2), never the path's."""
    try:
        return valid_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_import(ws: Workspace, args) -> int:
    bar = Bar("importing", args.quiet, unit="row")
    try:
        limits = ImportLimits.from_env()
        if args.max_pixels:
            limits.max_pixels = args.max_pixels
        res = ws.import_path(args.path, args.name, copy_images=args.copy, images_dir=args.images,
                             captions_file=args.captions, model_name=args.model_name, limits=limits, progress=bar,
                             vector_dtype=args.vector_dtype)
    except (DataFormatError, ValueError, OSError) as e:  # OSError: unreadable file, disk full, ...
        return err(str(e))
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
    print_table(["NAME", "PAIRS", "CAPTIONS", "IMAGES", "VECTORS", "FORMAT", "CREATED"],
                 [[m["name"], str(m["pairs"]), str(m["captions"]), str(m["images"]),
                   f"{m['vector_model']} ({m['dim']}-d)" if m.get("vector_model") else "-",
                   m["format"], m["created"]] for m in rows])
    return EXIT_OK


def cmd_show(ws: Workspace, args) -> int:
    try:
        ds = ws.open(args.name)
    except KeyError as e:
        return err(e.args[0])
    m = ds.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    if args.csv:  # the first --rows rows as the app's downloads write them, formulas escaped
        from ..export import to_csv

        rows = ds.rows(np.arange(min(args.rows, len(ds))))
        sys.stdout.write(to_csv(rows.drop(columns=["image_sha256"], errors="ignore")))
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
    if args.rows:
        rows = ds.rows(np.arange(min(args.rows, len(ds))))
        print()
        for _, row in rows.iterrows():
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
            status = err(e.args[0])
    return status


def register(sub) -> None:
    """Add import, list, show and delete to the subparsers `sub`."""
    s = sub.add_parser("import", help="import an image-caption set or precomputed vectors",
                       description="Import a folder (ImageFolder metadata.jsonl/csv, images with .txt captions, "
                                   "clip-retrieval output), a .zip of any of these, a COCO captions JSON, a "
                                   "CSV/TSV/JSONL/Parquet table, or .npy/.npz vectors. Bad rows are skipped and listed.")
    s.add_argument("path", help="file or folder to import")
    s.add_argument("--name", type=dataset_name, help="dataset name (default: from the path)")
    s.add_argument("--copy", action="store_true", help="copy images into the workspace (zips always are)")
    s.add_argument("--images", metavar="DIR", help="image folder for a COCO JSON or a table")
    s.add_argument("--captions", metavar="FILE", help="captions for .npy/.npz vectors (.txt one per line, or a table)")
    s.add_argument("--model-name", help="name of the model that made precomputed vectors")
    s.add_argument("--max-pixels", type=int, help="refuse images with more pixels (default 89,478,485)")
    s.add_argument("--vector-dtype", choices=("auto", "float16", "float32"),
                   help="how precomputed vectors are stored (default: $MMVIZ_VECTOR_DTYPE or auto: float16 "
                        "when they would take over 1 GiB as float32)")
    s.add_argument("-v", "--verbose", action="store_true", help="list every skipped row")
    output_options(s, None, "no progress bar")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("list", help="list datasets in the workspace")
    output_options(s, "machine-readable output", None)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="describe one dataset")
    s.add_argument("name")
    s.add_argument("--rows", type=int, default=5, help="how many pairs to print (default 5)")
    s.add_argument("--skipped", action="store_true", help="list every row skipped at import")
    s.add_argument("--csv", action="store_true", help="write the first --rows pairs as CSV to stdout")
    output_options(s, "print the manifest as JSON", None)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("delete", help="delete datasets")
    s.add_argument("names", nargs="+", metavar="NAME")
    s.set_defaults(func=cmd_delete)
