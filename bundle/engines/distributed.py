"""Small torch.distributed helpers that also work, as no-ops, in a single process."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise the process group from torchrun's environment and return this process's device.

    nccl when CUDA is available, gloo otherwise, so the same config runs on GPUs and as CPU processes in tests.
    """
    if not is_distributed():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("multi-process pretraining must be started with torchrun (RANK/WORLD_SIZE not set)")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
        logger.info("process group initialised: backend %s, rank %d of %d", backend, get_rank(), get_world_size())
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def destroy_distributed() -> None:
    """Leave the process group together: without the barrier a rank that is done first tears down its gloo pairs
    while another is still in a collective, and that rank aborts at exit ("terminate called without an active
    exception") after finishing its work."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def unwrap_model(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        network = network.module
    return network


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (returns a new tensor)."""
    if not is_distributed():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank: a decision taken once (whether a file exists) instead of by each rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` into every other rank, in place.

    The other ranks then load what they received with `load_state_dict`, as rank `src` loaded its file: modules
    that keep a value of their state on the host (the k-means initialised flag, the stage) re-read it there too.
    Without that, a rank whose k-means state was initialised kept believing so after receiving an uninitialised
    one, and its next step ran other collectives than rank `src`'s (a hang at the first stage-2 step).
    """
    if not is_distributed():
        return
    state = module.state_dict()  # detached tensors sharing the parameters' and buffers' storage
    for tensor in state.values():
        dist.broadcast(tensor, src=src)
    if get_rank() != src:
        module.load_state_dict(state)
