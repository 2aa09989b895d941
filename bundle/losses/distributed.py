"""Small torch.distributed helpers for the losses: gather with gradient, gather without, sums and broadcasts.

Every helper is the identity when torch.distributed is not initialised, so the same loss code runs in one process.
Batches may differ in size between ranks (the trainer drops reports without sentences), so the gathers pad to the
largest rank and cut the padding off again.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    if not distributed_ready():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    _, world = rank_and_world_size()
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    padded = torch.zeros((longest,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


class _GatherWithGradient(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's rows (SimCLR/CLIP style).

    Written here instead of torch.distributed.nn.functional.all_gather because that one is deprecated in torch 2.13
    and needs equal sizes on every rank.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], offset: int) -> torch.Tensor:
        ctx.offset, ctx.size = offset, x.shape[0]
        return _gather_padded(x.detach(), list(sizes))

    @staticmethod
    def backward(ctx, grad_all: torch.Tensor):
        grad_all = grad_all.contiguous()
        dist.all_reduce(grad_all, op=dist.ReduceOp.SUM)
        return grad_all[ctx.offset : ctx.offset + ctx.size], None, None


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate x [n_r, ...] of all ranks in rank order; returns (x_all, offset of this rank's rows in x_all)."""
    if not distributed_ready():
        return x, 0
    rank, _ = rank_and_world_size()
    sizes = _gather_sizes(x.shape[0], x.device)
    offset = sum(sizes[:rank])
    return _GatherWithGradient.apply(x, tuple(sizes), offset), offset


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [n_r, ...] of all ranks in rank order, without gradient."""
    if not distributed_ready():
        return x
    return _gather_padded(x, _gather_sizes(x.shape[0], x.device))


@torch.no_grad()
def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    if distributed_ready():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def broadcast_from_rank0_(x: torch.Tensor) -> torch.Tensor:
    if distributed_ready():
        dist.broadcast(x, src=0)
    return x
