"""Two Gloo processes with DDP and gather_with_grad give the loss and the gradients of one
process holding the whole batch."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmviz.finetune.distributed import cleanup, gather_with_grad, is_main, setup_from_env, world
from mmviz.finetune.losses import FinetuneLoss, LossConfig

WORLD_SIZE = 2
GLOBAL_BATCH = 8
GENERATOR_SEED = 7
SAME_TEXT = [0, 1, 2, 0, 3, 4, 1, 5]  # captions 0/3 and 1/6 are the same text, across the two ranks
CONFIGS = {
    "clip": dict(config=LossConfig(), same=False),
    # every random draw: noise on both sides, an m2-mix lam and a uni-modal lam
    "m2mix": dict(config=LossConfig(loss="m2mix", unimodal="both", noise=0.1, noise_modalities=("image", "text")),
                  same=True),
}
JOIN_TIMEOUT_S = 120

gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                          reason="torch.distributed has no Gloo")


class Towers(torch.nn.Module):
    """An image tower, a text tower and a learnable log logit scale, seeded, in float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 4).double()
        self.text = torch.nn.Linear(5, 4).double()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(5.0), dtype=torch.float64))

    def forward(self, image_x, text_x):
        # normalised per sample, before any gather, as the trainer does
        return F.normalize(self.image(image_x), dim=-1), F.normalize(self.text(text_x), dim=-1), self.log_scale.exp()


def global_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64),
            torch.randn(GLOBAL_BATCH, 5, generator=g, dtype=torch.float64))


def loss_and_grads(model, towers, image_x, text_x, name):
    """One forward and backward through `model` (DDP-wrapped or not) whose module is `towers`."""
    images, texts, scale = model(image_x, text_x)
    same = torch.tensor(SAME_TEXT)
    same = same[:, None] == same[None, :] if CONFIGS[name]["same"] else None
    generator = torch.Generator().manual_seed(GENERATOR_SEED)  # seeded alike on every rank
    loss_fn = FinetuneLoss(CONFIGS[name]["config"])
    loss, parts = loss_fn(gather_with_grad(images), gather_with_grad(texts), scale, same=same, generator=generator)
    loss.backward()
    return float(loss.detach()), parts, {n: p.grad.detach().clone() for n, p in towers.named_parameters()}


def _worker(rank, port, out_dir):
    """One process of a pretend torchrun launch: set its environment, then setup_from_env."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    try:
        got_rank, got_world, device = setup_from_env(device_preference="cpu")
        result = {"setup": (got_rank, got_world, str(device)), "world": world(), "is_main": is_main()}
        image_x, text_x = global_batch()
        rows = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        for name in CONFIGS:
            towers = Towers()
            model = torch.nn.parallel.DistributedDataParallel(towers)
            result[name] = loss_and_grads(model, towers, image_x[rows], text_x[rows], name)
        try:  # unequal local batches: every rank must raise, none may hang
            gather_with_grad(torch.zeros(rank + 1, 3, dtype=torch.float64))
            result["unequal"] = None
        except ValueError as e:
            result["unequal"] = str(e)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The workers are separate interpreters that import this file, not multiprocessing's spawn:
# spawn re-runs the parent's __main__, which after an AppTest in the same session is the app.
WORKER = ("import sys; sys.path.insert(0, sys.argv[4]); import test_finetune_distributed as t; "
          "t._worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])")


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    port = free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(port), str(out_dir), here],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD_SIZE)]
    try:
        outputs = [p.communicate(timeout=JOIN_TIMEOUT_S)[0] for p in procs]
        codes = [p.returncode for p in procs]
        assert codes == [0] * WORLD_SIZE, f"exit codes {codes}:\n" + "\n".join(o[-2000:] for o in outputs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


@gloo
def test_two_processes_set_up_from_the_torchrun_environment(two_process_results):
    for rank, result in enumerate(two_process_results):
        assert result["setup"] == (rank, WORLD_SIZE, "cpu")
        assert result["world"] == (rank, WORLD_SIZE)
        assert result["is_main"] == (rank == 0)


@gloo
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_with_gather_equals_one_process_on_the_whole_batch(two_process_results, name, one_torch_thread):
    towers = Towers()
    image_x, text_x = global_batch()
    want_loss, want_parts, want_grads = loss_and_grads(towers, towers, image_x, text_x, name)
    assert all(g.abs().sum() > 0 for g in want_grads.values())
    for result in two_process_results:
        loss, parts, grads = result[name]
        assert abs(loss - want_loss) < 1e-10
        assert parts.keys() == want_parts.keys()
        assert all(abs(parts[k] - want_parts[k]) < 1e-10 for k in parts)  # same noise, same lams
        assert grads.keys() == want_grads.keys()
        for key in grads:
            assert (grads[key] - want_grads[key]).abs().max() < 1e-9, key


@gloo
def test_unequal_local_batches_raise_on_every_rank(two_process_results):
    for result in two_process_results:
        assert result["unequal"] is not None and "same local shape" in result["unequal"]


def test_single_process_world_and_identity_gather(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert world() == (0, 1) and is_main()
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert setup_from_env(device_preference="cpu") == (0, 1, torch.device("cpu"))
    assert not (dist.is_available() and dist.is_initialized())
    cleanup()  # a no-op without a process group
