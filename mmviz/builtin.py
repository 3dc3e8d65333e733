"""Train the builtin model (`builtin:shapes`) on the shapes world, and build the demo set.

`mmviz builtin train` reproduces assets/builtin-shapes/model.safetensors: a small open_clip
CLIP (config assets/builtin-shapes/mmviz-shapes.json) trained from seeded random weights
with the symmetric InfoNCE loss of CLIP, on CPU, in about 20 minutes on 2 cores.
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import synthetic
from .models import BUILTIN_ARCH, BUILTIN_DIR, _open_clip
from .retrieval import recall_at_k

DEMO_NAME = "shapes-demo"
DEFAULTS = dict(n_train=20000, n_test=1000, steps=2400, batch_size=128, lr=1e-3, warmup=100,
                weight_decay=0.1, seed=0)


def _normalise(images_u8, mean, std):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), as open_clip's preprocess does for a 64x64 image."""
    import torch

    x = torch.as_tensor(images_u8).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def encode_scenes(model, tokenizer, scenes: list, mean, std, batch: int = 256):
    """(image features (N, D), caption features (M, D), caption owner (M,)), L2-normalised."""
    import torch

    imgs, txts, owner = [], [], []
    caps = [c for s in scenes for c in s.captions]
    owner = np.repeat(np.arange(len(scenes)), [len(s.captions) for s in scenes])
    with torch.inference_mode():
        for i in range(0, len(scenes), batch):
            x = _normalise(synthetic.render_array(scenes[i:i + batch]), mean, std)
            imgs.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1))
        for i in range(0, len(caps), batch):
            txts.append(torch.nn.functional.normalize(model.encode_text(tokenizer(caps[i:i + batch])), dim=-1))
    return torch.cat(imgs).numpy(), torch.cat(txts).numpy(), owner


def train(out_dir: str | Path = BUILTIN_DIR, progress: Callable[[int, int, float], None] | None = None,
          **overrides) -> dict:
    """Train the builtin model and write model.safetensors and metrics.json into `out_dir`.
    Returns the metrics. `progress(step, steps, loss)` is called after every step."""
    import torch
    from safetensors.torch import save_file

    from .finetune.losses import info_nce  # CLIP's loss, same captions as shared positives
    from .finetune.train import lr_at

    cfg = {**DEFAULTS, **overrides}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    oc = _open_clip()
    model = oc.create_model(BUILTIN_ARCH)
    tokenizer = oc.get_tokenizer(BUILTIN_ARCH)
    mean, std = model.visual.image_mean or oc.OPENAI_DATASET_MEAN, model.visual.image_std or oc.OPENAI_DATASET_STD

    t0 = time.time()
    world = synthetic.make_world(cfg["n_train"], 0, cfg["n_test"], seed=cfg["seed"])
    train_scenes = world["train"]
    images = torch.as_tensor(synthetic.render_array(train_scenes))  # uint8, ~250 MB for 20k
    n_caps = np.array([len(s.captions) for s in train_scenes])
    offsets = np.concatenate([[0], np.cumsum(n_caps)[:-1]])
    tokens = tokenizer([c for s in train_scenes for c in s.captions])

    params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    params_rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": cfg["weight_decay"]},
                             {"params": params_rest, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)
    steps, bs = cfg["steps"], cfg["batch_size"]

    model.train()
    order = rng.permutation(len(train_scenes))
    pos = 0
    losses = []
    for step in range(steps):
        if pos + bs > len(order):
            order, pos = rng.permutation(len(train_scenes)), 0
        idx = order[pos:pos + bs]
        pos += bs
        cap = offsets[idx] + rng.integers(0, n_caps[idx])
        x = _normalise(images[idx].numpy(), mean, std)
        t = tokens[cap]
        same = (t[:, None, :] == t[None, :, :]).all(-1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, cfg["lr"], cfg["warmup"])
        img, txt, scale = model(x, t)
        loss = info_nce(img, txt, scale, same)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if progress:
            progress(step + 1, steps, losses[-1])
    train_seconds = time.time() - t0

    model.eval()
    test = world["test"]
    im, tx, owner = encode_scenes(model, tokenizer, test, mean, std)
    rec = recall_at_k(im, tx, text_owner=owner)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"arch": BUILTIN_ARCH, "seed": str(cfg["seed"])})
    metrics = {
        "model": "builtin:shapes",
        "arch": BUILTIN_ARCH,
        "config": cfg,
        "params": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "test_split": {"images": len(test), "captions": int(len(owner))},
        "test_recall": {d: {f"R@{k}": round(v, 4) for k, v in r.items()} for d, r in rec.items()},
        "chance_R@1": {"i2t": round(float(np.mean([len(s.captions) for s in test])) / len(owner), 5),
                       "t2i": round(1 / len(test), 5)},
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def make_demo(workspace, n: int = 600, seed: int = 0, name: str = DEMO_NAME):
    """Import a shapes-world test set as dataset `name` (a few seconds), unless present, with
    the scenes' VQA questions attached (`mmviz.vqa.questions`; seeded 80/20 split by image)."""
    import tempfile

    from .vqa.data import shapes_examples
    from .vqa.questions import attach, questions_path

    label = f"shapes world (seed {seed}, test split, {{n}} scenes)"
    if workspace.exists(name):
        ds = workspace.open(name)
        # A demo made before questions existed gets them (same scenes: same seed and size).
        if ds.report.source == label.format(n=len(ds)) and not questions_path(workspace, name).exists():
            attach(workspace, ds, shapes_examples(synthetic.make_world(0, 0, len(ds), seed=seed)["test"]), seed=seed)
        return ds
    scenes = synthetic.make_world(0, 0, n, seed=seed)["test"]
    with tempfile.TemporaryDirectory(prefix="mmviz-demo-") as tmp:
        folder = synthetic.write_imagefolder(scenes, Path(tmp) / name)
        ds = workspace.import_path(folder, name, copy_images=True, source_label=label.format(n=n)).dataset
    attach(workspace, ds, shapes_examples(scenes), seed=seed)  # image = scene id = dataset id
    return ds
