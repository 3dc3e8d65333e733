"""mmviz embed: a dataset's images and captions under a model, cached."""
from __future__ import annotations

import sys

from ..store import Workspace
from .common import EXIT_OK, dataset_and_model, err, output_options


def cmd_embed(ws: Workspace, args) -> int:
    """Under torchrun every process embeds its share (see embed_dataset); rank 0 reports."""
    import datetime

    from tqdm import tqdm

    from ..embed import embed_dataset
    from ..finetune import distributed
    from ..models import ModelSpecError, ModelUnavailable

    try:
        ds = ws.open(args.name)
    except KeyError as e:
        return err(e.args[0])
    # Processes wait at barriers for the slowest one's share: allow hours, not torch's 30 min.
    rank, world_size, device = distributed.setup_from_env(args.device, timeout=datetime.timedelta(hours=12))
    barrier = (lambda: distributed.dist.barrier()) if world_size > 1 else None
    bars: dict[str, tqdm] = {}

    def progress(done: int, total: int, stage: str) -> None:
        if args.quiet or rank != 0:
            return
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=f"embedding {stage}", unit=stage[:-1] if stage == "images" else "cap",
                               file=sys.stderr)
        bars[stage].update(done - bars[stage].n)

    try:
        emb = embed_dataset(ws, ds, args.model, batch_size=args.batch_size, workers=args.workers,
                            device=str(device) if world_size > 1 else args.device, progress=progress,
                            rank=rank, world_size=world_size, barrier=barrier)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        return err(str(e))
    finally:
        for b in bars.values():
            b.close()
        distributed.cleanup()
    if rank != 0:
        return EXIT_OK
    print(f"{ds.name} under {emb.model}: {len(emb.ids)} images, {len(emb.text)} captions, {emb.dim}-d; "
          f"embedded {emb.computed['images']} images and {emb.computed['captions']} captions now, "
          f"{emb.cached['images']} and {emb.cached['captions']} from the cache, in {emb.seconds:.1f} s")
    print(f"cache: {emb.cache_path}")
    for id_, why in emb.skipped[:20]:
        print(f"  skipped {id_}: {why}")
    return EXIT_OK


def register(sub) -> None:
    """Add embed to the subparsers `sub`."""
    s = sub.add_parser("embed", help="embed a dataset's images and captions with a model (cached)",
                       description="Embed with any open_clip model; only images and captions not yet in the "
                                   "workspace's cache for that model are computed. Under torchrun "
                                   "(torchrun --nproc_per_node N -m mmviz.cli embed ...) the processes, on one node "
                                   "or several sharing the workspace folder, split the work.")
    dataset_and_model(s, "model spec: builtin:shapes (default), ARCH:TAG (ViT-B-32:laion2b_s34b_b79k), "
                          "ARCH:/path/weights.safetensors, ARCH:random, local-dir:/path, hf-hub:org/repo")
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    s.add_argument("--workers", type=int, help="image decoding processes (default: cores - 1, at most 4)")
    s.add_argument("--device", help="cuda, mps or cpu (default: the best available, or $MMVIZ_DEVICE)")
    output_options(s, None, "no progress bars")
    s.set_defaults(func=cmd_embed)
