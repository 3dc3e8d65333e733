"""Data-parallel training helpers: torchrun set-up and an all-gather that passes gradients.

Contrastive losses need every negative of the global batch, so each process gathers the
embeddings of all processes (gather_with_grad) and computes the SAME full loss on the global
batch. The gradient accounting that makes this exact:

- Each process's loss L is the whole-batch loss; its backward gives dL/d(all embeddings). The
  backward of gather_with_grad all-reduces (sums) that incoming gradient over the processes and
  keeps this process's slice: world_size copies of the same dL/d(slice), i.e. world_size times
  the true gradient of the local embeddings. (Were the processes' losses to differ, the sum
  followed by DDP's average would give the gradient of their mean.)
- Back through the local towers, each process's parameter gradient is world_size times the
  contribution of its own samples; DistributedDataParallel then averages the parameter
  gradients over the processes (divides the sum by world_size), which leaves the sum of all
  samples' contributions: exactly the gradient of one process holding the whole batch.
- Parameters used only in the loss (a learnable logit scale inside the DDP module) get the
  full dL/dparam on every process, and the average of identical values is that value.

Requires equal local batch sizes on every process (drop the last incomplete batch): the
gather checks the shapes (one extra tiny all_gather) and raises ValueError on every process
alike otherwise. Launch with `torchrun --nproc_per_node N ...`; without torchrun everything
here is a no-op for a single process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this is the process that logs, evaluates and saves (rank 0)."""
    return world()[0] == 0


def setup_from_env(device_preference: str | None = None, timeout=None):
    """Initialise torch.distributed when launched by torchrun (env WORLD_SIZE > 1): NCCL with
    one GPU per process (cuda:LOCAL_RANK) when CUDA is available and not declined by
    device_preference="cpu", else Gloo on CPU. Returns (rank, world_size, device). Without
    torchrun it does nothing and returns (0, 1, device): device_preference if given, else cuda
    when available, else cpu. `timeout` (a timedelta) bounds each collective call, barriers
    included: a job whose processes wait long for each other (embedding) raises it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device_preference is None or str(device_preference).startswith("cuda"))
    if world_size <= 1:
        if device_preference is not None:
            return 0, 1, torch.device(device_preference)
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        kw = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kw)  # env:// from torchrun
    rank, world_size = world()
    return rank, world_size, device


def cleanup():
    """destroy_process_group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all_gather in rank order. Backward: all_reduce(SUM) the incoming gradient and
    return this rank's slice (see the module docstring for why the sum is right)."""

    @staticmethod
    def forward(ctx, x):
        rank, world_size = world()
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x):
    """(B, D) local -> (world_size * B, D) global, in rank order, with gradients flowing back to
    each process's own rows. With world size 1 returns x. Every process must hold the same
    shape; otherwise ValueError (raised on all processes, so none hangs)."""
    _, world_size = world()
    if world_size == 1:
        return x
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError("gather_with_grad needs the same local shape on every process, got "
                         f"{[tuple(s.tolist()) for s in shapes]}: use equal local batches (drop_last)")
    return _GatherWithGrad.apply(x)
