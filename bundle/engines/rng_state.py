"""Random-number-generator state as a checkpointable object (tensors and plain numbers only).

Checkpoints are loaded with `torch.load(weights_only=True)`, which refuses numpy arrays and arbitrary Python objects,
so the numpy and `random` states are converted to tensors. Under torch.distributed every rank's state is gathered
into the checkpoint and each rank gets its own back on resume (dropout and masking draws differ per rank).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from bundle.engines import distributed as dist_utils

logger = logging.getLogger(__name__)


def capture_local_rng_state() -> dict:
    """This process's torch (CPU and CUDA), numpy and Python `random` states as tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    if np_name != "MT19937":
        raise RuntimeError(f"unexpected numpy bit generator {np_name}")
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": float("nan") if py_gauss is None else float(py_gauss),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_local_rng_state(state: dict) -> None:
    """Inverse of `capture_local_rng_state`."""
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    gauss = float(state["python_gauss"])
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_internal"].tolist()),
            None if gauss != gauss else gauss,
        )
    )
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda_states])
        else:
            logger.warning(
                "checkpoint holds CUDA RNG states of %d devices, this machine has %d: not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


class RNGState:
    """Put in a checkpoint's save/load dict as `"rng": RNGState()`.

    state_dict() is a collective under torch.distributed (every rank must call it; rank 0 writes the file).
    """

    def state_dict(self) -> dict:
        local = capture_local_rng_state()
        return {"per_rank": dist_utils.all_gather_object(local), "world_size": dist_utils.get_world_size()}

    def load_state_dict(self, state: dict) -> None:
        per_rank = state["per_rank"]
        rank = dist_utils.get_rank()
        if len(per_rank) != dist_utils.get_world_size():
            logger.warning(
                "checkpoint RNG states come from %d processes, this run has %d: rank %d takes rank %d's",
                len(per_rank),
                dist_utils.get_world_size(),
                rank,
                rank % len(per_rank),
            )
        restore_local_rng_state(per_rank[rank % len(per_rank)])
