"""Short fine-tuning runs of an open_clip model on a stored dataset, resumable, on one process
or under torchrun.

One run lives in `<workspace>/runs/<id>/`:

    config.json              the FinetuneConfig (written once, when the run is created)
    status.json              state (created, running, finished, failed, cancelled), step, pid, error
    metrics.jsonl            one JSON object per line: {"kind": "step", ...} after every step,
                             {"kind": "epoch", ...} after each evaluation
    checkpoint.safetensors   the trainable weights, AdamW's moments and the step (metadata)
    result.json              validation metrics before and after, the trained parts, timings
    before.npz, after.npz    the validation split's vectors under the start and final weights
    model/                   the fine-tuned model as an open_clip folder: `local-dir:<run>/model`

Everything random is a function of (seed, step): the split, each epoch's order, each step's
caption choice, the mixup ratios and the noise. So a run killed at any point and resumed from
its last checkpoint takes exactly the steps the uninterrupted run would have taken, and every
process of a distributed run draws the same global batch and slices its own part.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..geometry import gap_length
from ..retrieval import recall_at_k
from ..run_folder import append_metrics, cancel_requested, read_metrics, truncate_metrics, write_status
from ..store import Workspace, atomic_write_json, has_image
from .config import FinetuneConfig, read_config, split_rows
from .distributed import cleanup, gather_with_grad, setup_from_env
from .losses import MAX_LOGIT_SCALE, FinetuneLoss

# The output projections of open_clip's towers, under their names in each architecture family.
_PROJECTIONS = re.compile(r"^(visual\.proj|text_projection|visual\.head\.|visual\.attnpool\.c_proj\.|text\.proj)")
_BLOCK = re.compile(r"^(visual\.transformer\.resblocks|transformer\.resblocks|text\.transformer\.resblocks)\.(\d+)\.")
_FINAL_NORMS = re.compile(r"^(visual\.ln_post|ln_final|text\.ln_final)\.")


class Cancelled(Exception):
    """The run was asked to stop (SIGTERM or a cancel file); its checkpoint is saved."""


# ----------------------------------------------------------------------------------------
# data


class PairData:
    """A dataset's images (decoded on demand, kept in memory up to a budget) and tokenised
    captions, for one model's preprocessing and tokenizer."""

    MEMORY_BUDGET = 2 << 30  # bytes of uint8 image tensors kept after the first decode

    def __init__(self, ds, loaded):
        from ..embed import split_preprocess

        t = ds.table()
        self.rows = np.flatnonzero(has_image(t))
        if len(self.rows) == 0:
            raise ValueError(f"dataset {ds.name} has no images: fine-tuning needs image files, not only vectors")
        self.ds = ds
        self.ids = [t["id"].iloc[r] for r in self.rows]
        self.captions = [list(t["captions"].iloc[r]) for r in self.rows]
        self.per_image, self.per_batch = split_preprocess(loaded.preprocess)
        self.tokenizer = loaded.tokenizer
        flat = [c for caps in self.captions for c in caps]
        self.tokens = loaded.tokenizer(flat)
        counts = np.array([len(c) for c in self.captions])
        self.caption_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.caption_count = counts
        self._images: dict[int, torch.Tensor] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> torch.Tensor:
        if i in self._images:
            return self._images[i]
        from PIL import Image, ImageOps

        path = self.ds.image_path(int(self.rows[i]))
        try:
            with Image.open(path) as im:
                x = self.per_image(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as e:
            raise ValueError(f"image {path} (dataset {self.ds.name}, id {self.ids[i]}) cannot be read: {e}; "
                             f"re-import the dataset") from e
        if self._bytes + x.numel() * x.element_size() <= self.MEMORY_BUDGET:
            self._images[i] = x
            self._bytes += x.numel() * x.element_size()
        return x

    def images(self, idx) -> torch.Tensor:
        x = torch.stack([self.image(int(i)) for i in idx])
        if self.per_batch is not None:  # uint8 -> normalised float, once per batch
            return self.per_batch(x)
        return x

    def batch(self, idx: np.ndarray, step_seed: int, local: slice = slice(None)):
        """(images of idx[local], caption tokens of idx, same-caption matrix of idx) for the
        global batch of image indices idx, one caption of each image chosen by the step's
        seed. A process decodes only its own slice's images; the captions of the whole batch
        are cheap, and the loss needs their same-text matrix."""
        rng = np.random.default_rng([step_seed, 1])
        cap = self.caption_start[idx] + rng.integers(0, self.caption_count[idx])
        t = self.tokens[torch.as_tensor(cap)]
        same = (t[:, None, :] == t[None, :, :]).all(-1)
        return self.images(idx[local]), t, same


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 11, epoch]).permutation(n)


def global_batch(train_rows: np.ndarray, batch_size: int, seed: int, step: int) -> tuple[np.ndarray, int]:
    """The image indices of step `step` (0-based) and its epoch: epochs are passes over the
    training images in a seeded order, the last incomplete batch of each dropped."""
    per_epoch = len(train_rows) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {len(train_rows)} training images; "
                         f"lower --batch-size")
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(len(train_rows), seed, epoch)
    return train_rows[order[k * batch_size:(k + 1) * batch_size]], epoch


# ----------------------------------------------------------------------------------------
# model parts


def select_trainable(model: torch.nn.Module, trainable: str, last_blocks: int = 1,
                     learn_scale: bool = True) -> list[str]:
    """Freeze everything but the chosen parts; returns the names of the trained parameters.
    "proj": the towers' output projections; "last": also the last `last_blocks` residual
    blocks of each tower and the final layer norms; "all": every parameter. The logit scale
    trains when `learn_scale`."""
    names = [n for n, _ in model.named_parameters()]
    if trainable == "all":
        keep = set(names)
    else:
        keep = {n for n in names if _PROJECTIONS.match(n)}
        if not keep:
            raise ValueError(f"no output projection found among {type(model).__name__}'s parameters; "
                             f"use trainable='last' or 'all'")
        if trainable == "last":
            towers: dict[str, set[int]] = {}
            for n in names:
                m = _BLOCK.match(n)
                if m:
                    towers.setdefault(m.group(1), set()).add(int(m.group(2)))
            if not towers:
                raise ValueError(f"no transformer blocks found in {type(model).__name__}; use trainable='proj' or 'all'")
            last = {t: set(sorted(ix)[-last_blocks:]) for t, ix in towers.items()}
            keep |= {n for n in names if (m := _BLOCK.match(n)) and int(m.group(2)) in last[m.group(1)]}
            keep |= {n for n in names if _FINAL_NORMS.match(n)}
    keep.discard("logit_scale")
    if learn_scale and "logit_scale" in names:
        keep.add("logit_scale")
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return [n for n in names if n in keep]


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings and the logit scale (CLIP's rule)."""
    decay, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embedding" not in n else rest).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """Trainable weights and AdamW's state after `step` steps, atomically, as safetensors."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().reshape(-1) \
                    if key == "step" else value.detach().cpu().contiguous()
    tmp = folder / ".checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, folder / "checkpoint.safetensors")


def load_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore a checkpoint into model and optimizer; returns its step (0 when there is none)."""
    from safetensors import safe_open

    path = folder / "checkpoint.safetensors"
    if not path.exists():
        return 0
    params = dict(model.named_parameters())
    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
        keys = list(f.keys())
        with torch.no_grad():
            for k in keys:
                if k.startswith("model."):
                    params[k[len("model."):]].copy_(f.get_tensor(k))
        for k in keys:
            if k.startswith("opt."):
                name, _, key = k[len("opt."):].rpartition(".")
                value = f.get_tensor(k)
                p = params[name]
                opt.state[p][key] = value.reshape(()) if key == "step" else value.to(p.device)
    return step


# ----------------------------------------------------------------------------------------
# evaluation


def encode_rows(model, data: PairData, rows: np.ndarray, device, batch_size: int = 128):
    """(image vectors, caption vectors, caption owner) of the given image indices, L2-normalised."""
    model.eval()
    imgs, txts = [], []
    caps = np.concatenate([data.caption_start[i] + np.arange(data.caption_count[i]) for i in rows])
    owner = np.repeat(np.arange(len(rows)), data.caption_count[rows])
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            x = data.images(rows[i:i + batch_size]).to(device)
            imgs.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).cpu())
        for i in range(0, len(caps), 256):
            t = data.tokens[torch.as_tensor(caps[i:i + 256])].to(device)
            txts.append(torch.nn.functional.normalize(model.encode_text(t).float(), dim=-1).cpu())
    return torch.cat(imgs).numpy(), torch.cat(txts).numpy(), owner


def validation(model, data: PairData, rows: np.ndarray, device) -> dict[str, float]:
    """The quick numbers logged during training: recall@1/5 both ways and the gap length."""
    vi, vt, vo = encode_rows(model, data, rows, device)
    rec = recall_at_k(vi, vt, (1, 5), text_owner=vo)
    first = np.unique(vo, return_index=True)[1]
    return {"val_i2t_r1": rec["i2t"][1], "val_t2i_r1": rec["t2i"][1], "val_i2t_r5": rec["i2t"][5],
            "val_t2i_r5": rec["t2i"][5], "val_gap": gap_length(vi, vt[first])}


def _metrics(images, texts, owner) -> dict[str, float]:
    from ..transforms import evaluate

    return {k: float(v) for k, v in evaluate(images, texts, owner).items()}


def _save_vectors(path: Path, images, texts, owner, data: PairData, rows: np.ndarray) -> None:
    import io

    from ..store import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, image=images, text=texts, text_owner=owner, ids=np.array([data.ids[i] for i in rows]),
             captions=np.array([c for i in rows for c in data.captions[i]]))
    atomic_write_bytes(path, buf.getvalue())


def load_vectors(folder: str | os.PathLike, which: str) -> dict[str, np.ndarray]:
    """The validation vectors a run stored (image, text, text_owner, ids, captions): which is
    "before" or "after"."""
    with np.load(Path(folder) / f"{which}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------
# the run


Progress = Callable[[dict], None]


def run(home, folder: str | os.PathLike, progress: Progress | None = None) -> dict:
    """Run (or resume) the run in `folder` to its last step; returns result.json's content.

    Under torchrun every process calls this; process 0 alone reads and writes the folder's
    logs and files, and all of them train. `progress(row)` hears every step and epoch row.
    SIGTERM or a `cancel` file in the folder stops the run after the current step, with a
    checkpoint saved (raises Cancelled)."""
    folder = Path(folder)
    config = read_config(folder)
    ws = home if isinstance(home, Workspace) else Workspace(home)
    rank, world_size, device = setup_from_env(config.device)
    main = rank == 0
    stop = {"flag": False}

    def on_term(signum, frame):
        if signum == signal.SIGINT and stop["flag"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop["flag"] = True

    # SIGTERM (the app's Cancel) and a first Ctrl-C both stop after the current step with a
    # checkpoint. Python sets handlers from the main thread only (not under a notebook's worker).
    can_handle = main and threading.current_thread() is threading.main_thread()
    old_handlers = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)} if can_handle else {}
    try:
        if main:
            write_status(folder, "running", pid=os.getpid(), world_size=world_size, steps=config.steps)
        result = _train(ws, folder, config, rank, world_size, device, stop, progress)
        if main:
            write_status(folder, "finished", step=config.steps)
        return result
    except Cancelled:
        if main:
            write_status(folder, "cancelled")
        raise
    except BaseException as e:
        if main:
            write_status(folder, "failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        cleanup()


def _should_stop(here: bool, world_size: int, device) -> bool:
    """Whether any process was asked to stop: all of them must leave the loop together, or the
    others would wait forever in the next gather."""
    if world_size == 1:
        return here
    flag = torch.tensor([1.0 if here else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _train(ws: Workspace, folder: Path, config: FinetuneConfig, rank: int, world_size: int, device,
           stop: dict, progress: Progress | None) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from ..models import build_model, model_config, save_open_clip_folder

    main = rank == 0
    if config.batch_size % world_size:
        raise ValueError(f"batch size {config.batch_size} does not split over {world_size} processes")
    torch.manual_seed(config.seed)
    t_start = time.time()
    ds = ws.open(config.dataset)
    loaded = build_model(config.model, str(device), precision="fp32")
    model = loaded.model
    data = PairData(ds, loaded)
    split = split_rows(len(data), config.val_fraction, config.seed, config.max_val)
    learn_scale = config.temperature is None
    trained = select_trainable(model, config.trainable, config.last_blocks, learn_scale)
    opt = make_optimizer(model, config)
    step = load_checkpoint(folder, model, opt)  # every process: they must start equal
    resumed_from = step
    if main and (folder / "metrics.jsonl").exists():
        truncate_metrics(folder, step)

    # before: the start weights on the validation split (kept from the first attempt on resume)
    if main and not ((folder / "before.npz").exists() and (folder / "before.json").exists()):
        start = build_model(config.model, str(device), precision="fp32").model
        vi, vt, vo = encode_rows(start, data, split.val, device)
        del start
        _save_vectors(folder / "before.npz", vi, vt, vo, data, split.val)
        atomic_write_json(folder / "before.json", _metrics(vi, vt, vo))

    loss_fn = FinetuneLoss(config.loss_config())
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world_size > 1 else model
    fixed_scale = torch.tensor(1.0 / config.temperature, device=device) if not learn_scale else None
    per_epoch = len(split.train) // config.batch_size
    eval_every = config.eval_every or max(1, per_epoch)
    local = config.batch_size // world_size
    since_eval: list[float] = []  # training losses since the last validation row
    t0 = time.time()
    while step < config.steps:
        if _should_stop(stop["flag"] or (main and cancel_requested(folder)), world_size, device):
            if main:
                save_checkpoint(folder, model, opt, step)
            raise Cancelled(f"run {folder.name} stopped at step {step}; checkpoint saved")
        idx, epoch = global_batch(split.train, config.batch_size, config.seed, step)
        mine = slice(rank * local, (rank + 1) * local)
        images, tokens, same = data.batch(idx, config.seed * 1_000_003 + step, mine)
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            img, txt, scale = net(images.to(device), tokens[mine].to(device))
        img = gather_with_grad(img.float())
        txt = gather_with_grad(txt.float())
        scale = fixed_scale if fixed_scale is not None else scale.float()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        loss, parts = loss_fn(img, txt, scale, same.to(device), epoch=epoch, generator=generator)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                         config.grad_clip))
        scaler.step(opt)
        scaler.update()
        if learn_scale and hasattr(model, "logit_scale"):
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
        step += 1
        if main:
            row = {"kind": "step", "step": step, "steps": config.steps, "epoch": epoch, **parts,
                   "lr": opt.param_groups[0]["lr"], "logit_scale": float(scale.detach()), "grad_norm": grad_norm,
                   "seconds": round(time.time() - t0, 3)}
            append_metrics(folder, row)
            if progress:
                progress(row)
        if main and (step % config.checkpoint_every == 0 or step == config.steps):
            save_checkpoint(folder, model, opt, step)
            write_status(folder, "running", step=step)
        if main:
            since_eval.append(parts["loss"])
        if main and (step % eval_every == 0 or step == config.steps):
            row = {"kind": "epoch", "step": step, "epoch": step / max(1, per_epoch),
                   "train_loss": float(np.mean(since_eval)), **validation(model, data, split.val, device)}
            since_eval = []
            append_metrics(folder, row)
            if progress:
                progress(row)
    train_seconds = time.time() - t0

    result = {}
    if main:
        vi, vt, vo = encode_rows(model, data, split.val, device)
        _save_vectors(folder / "after.npz", vi, vt, vo, data, split.val)
        after = _metrics(vi, vt, vo)
        before = json.loads((folder / "before.json").read_text("utf-8"))
        save_open_clip_folder(loaded, folder / "model", model_config(config.model),
                              extra={"run": folder.name, "base_model": config.model, "loss": config.loss})
        steps_log = read_metrics(folder, "step")
        result = {
            "run": folder.name, "config": asdict(config), "before": before, "after": after,
            "trained_parameters": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "trained_names": len(trained), "train_images": int(len(split.train)), "val_images": int(len(split.val)),
            "val_captions": int(len(vo)), "world_size": world_size, "device": str(device),
            "resumed_from": resumed_from, "train_seconds": round(train_seconds, 2),
            "total_seconds": round(time.time() - t_start, 2),
            "first_loss": steps_log[0]["loss"] if steps_log else None,
            "final_loss": float(np.mean([r["loss"] for r in steps_log[-10:]])) if steps_log else None,
            "model_spec": f"local-dir:{folder / 'model'}",
        }
        atomic_write_json(folder / "result.json", result)
    return result
