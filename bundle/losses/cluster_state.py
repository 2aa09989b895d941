"""The k-means state of the cluster-guided report loss (method.md 4.4): centroids, an initialised flag, a step counter.

All three are buffers, so they are saved and restored with the model's state_dict (checkpoints, resumption) and move
with the model between devices. The bank of recent z2 batches for the FAISS initialisation is transient (not saved):
after a resumption before initialisation it refills within `bank_batches` steps.

Under torch.distributed with `synchronize=True`, every rank holds identical centroids: the initialisation data is
gathered from all ranks, the centroids are computed on rank 0 and broadcast, and the per-cluster sums and counts of
every update are all-reduced. With `synchronize=False` (the published code) each rank keeps its own centroids.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bundle.losses.distributed import (
    all_gather_no_grad,
    all_reduce_sum_,
    broadcast_from_rank0_,
    distributed_ready,
    rank_and_world_size,
)

logger = logging.getLogger(__name__)

UPDATE_MODES = ("mean", "sum")
INIT_METHODS = ("faiss", "greedy")


def greedy_farthest_init(data: torch.Tensor, num_clusters: int, first_index: int) -> torch.Tensor:
    """The published heuristic: start at row `first_index`, then repeatedly take the row with the smallest cosine to
    the LAST chosen row among the rows not chosen yet. data: [N, D] with N >= num_clusters; returns [K, D] rows of data.
    """
    n = data.shape[0]
    if n < num_clusters:
        raise ValueError(f"greedy initialisation needs at least {num_clusters} vectors, got {n}")
    unit = F.normalize(data, dim=-1)
    cosine = unit @ unit.t()
    taken = torch.zeros(n, dtype=torch.bool, device=data.device)
    chosen = [int(first_index)]
    taken[first_index] = True
    # A loop over K (not over the batch), run once per training run.
    for _ in range(num_clusters - 1):
        candidates = cosine[chosen[-1]].masked_fill(taken, float("inf"))
        nxt = int(torch.argmin(candidates))
        chosen.append(nxt)
        taken[nxt] = True
    return data[chosen]


def faiss_spherical_kmeans(data: torch.Tensor, num_clusters: int, iterations: int, seed: int) -> torch.Tensor:
    """Spherical k-means with FAISS (faiss-gpu when a GPU build and a GPU are present). data: [N, D], N >= K."""
    import faiss

    points = np.ascontiguousarray(data.detach().float().cpu().numpy())
    kmeans = faiss.Kmeans(
        points.shape[1],
        num_clusters,
        niter=iterations,
        spherical=True,
        seed=seed,
        verbose=False,
        gpu=bool(torch.cuda.is_available() and faiss.get_num_gpus() > 0),
        # The bank may hold fewer than FAISS's recommended 39 points per centroid; that is expected, do not warn.
        min_points_per_centroid=1,
    )
    kmeans.train(points)
    return torch.from_numpy(np.array(kmeans.centroids, dtype=np.float32))


class KMeansClusterState(nn.Module):
    """Centroids [K, D] updated by momentum k-means on detached z2 (image-to-text sentence features).

    Args:
        num_clusters: K.
        dim: D, the embedding width.
        lr: momentum rate of the update, c <- lr * m_c + (1 - lr) * c.
        update_mode: "mean" (m_c = mean of the members, fixed) or "sum" (plain sum, official).
        init_method: "faiss" (spherical k-means over a bank of recent batches, fixed) or "greedy" (official).
        bank_batches: M, how many recent batches of z2 the FAISS bank keeps.
        kmeans_iterations: FAISS iterations.
        seed: seed of FAISS and of the greedy first row.
        synchronize: keep the centroids identical on all ranks (fixed) or per rank (official).
    """

    def __init__(
        self,
        num_clusters: int = 128,
        dim: int = 768,
        lr: float = 0.001,
        update_mode: str = "mean",
        init_method: str = "faiss",
        bank_batches: int = 10,
        kmeans_iterations: int = 20,
        seed: int = 0,
        synchronize: bool = True,
    ):
        super().__init__()
        if num_clusters < 2:
            raise ValueError("num_clusters must be >= 2: the hard negative is the second-nearest centroid")
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {update_mode!r}")
        if init_method not in INIT_METHODS:
            raise ValueError(f"init_method must be one of {INIT_METHODS}, got {init_method!r}")
        self.num_clusters, self.dim, self.lr = num_clusters, dim, lr
        self.update_mode, self.init_method = update_mode, init_method
        self.kmeans_iterations, self.seed, self.synchronize = kmeans_iterations, seed, synchronize
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))
        self._bank: deque[torch.Tensor] = deque(maxlen=bank_batches)
        self._told_waiting = False
        self._initialized_on_host = False

    @property
    def is_initialized(self) -> bool:
        # once True it stays True until a state dict is loaded, so steady-state steps skip the device read
        if not self._initialized_on_host:
            self._initialized_on_host = bool(self.initialized)
        return self._initialized_on_host

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized_on_host = False

    def _synced(self) -> bool:
        return self.synchronize and distributed_ready()

    # ----------------------------------------------------------------------------------------- assignments
    def cosine_to_centroids(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, K] cosine similarities (centroids are not unit length after momentum updates)."""
        return F.normalize(x.float(), dim=-1) @ F.normalize(self.centroids, dim=-1).t()

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return self.cosine_to_centroids(x).argmax(dim=-1)

    @torch.no_grad()
    def second_nearest_centroids(self, x: torch.Tensor) -> torch.Tensor:
        """The hard negative of each row: the centroid with the second highest cosine (a detached copy)."""
        index = self.cosine_to_centroids(x).topk(2, dim=-1).indices[:, 1]
        return self.centroids[index].clone()

    @torch.no_grad()
    def same_cluster_mask(self, x: torch.Tensor) -> torch.Tensor:
        """M_ij = 1 if rows i and j share their nearest centroid and i != j; float [N, N]."""
        assign = self.nearest(x)
        same = assign.unsqueeze(0) == assign.unsqueeze(1)
        same.fill_diagonal_(False)
        return same.float()

    @torch.no_grad()
    def member_counts(self, x: torch.Tensor) -> torch.Tensor:
        """Members per centroid [K] for the rows of x (summed over ranks when synchronised)."""
        counts = torch.bincount(self.nearest(x), minlength=self.num_clusters).float()
        return all_reduce_sum_(counts) if self._synced() else counts

    # ----------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, z2: torch.Tensor) -> torch.Tensor:
        """One momentum k-means step on detached z2 [N, D]; returns the member counts [K] used."""
        z2 = z2.detach().float()
        onehot = F.one_hot(self.nearest(z2), self.num_clusters).to(z2.dtype)  # [N, K]
        sums_and_counts = torch.cat([onehot.t() @ z2, onehot.sum(0).unsqueeze(1)], dim=1)  # [K, D + 1]
        if self._synced():
            all_reduce_sum_(sums_and_counts)
        sums, counts = sums_and_counts[:, :-1], sums_and_counts[:, -1]
        target = sums / counts.clamp(min=1).unsqueeze(1) if self.update_mode == "mean" else sums
        moved = self.lr * target + (1 - self.lr) * self.centroids
        # Clusters with no member keep their value.
        self.centroids.copy_(torch.where((counts > 0).unsqueeze(1), moved, self.centroids))
        return counts

    # ----------------------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def observe_and_maybe_initialise(self, z2: torch.Tensor, gate_open: bool) -> bool:
        """Called on each training step before initialisation. Banks z2 (FAISS mode) and, when the start gate is
        open and enough vectors are available, sets the centroids. Returns True on the step that initialises."""
        candidates = z2.detach().float()
        if self._synced():
            candidates = all_gather_no_grad(candidates)
        if self.init_method == "faiss":
            self._bank.append(candidates.cpu())
        if not gate_open:
            return False
        data = torch.cat(list(self._bank)) if self.init_method == "faiss" else candidates.cpu()
        if data.shape[0] < self.num_clusters:
            if not self._told_waiting:
                logger.warning(
                    "k-means start gate is open but only %d z2 vectors are available for %d centroids (%s "
                    "initialisation); waiting for more (said once).",
                    data.shape[0],
                    self.num_clusters,
                    self.init_method,
                )
                self._told_waiting = True
            return False
        rank, _ = rank_and_world_size()
        if rank == 0 or not self._synced():
            centroids = self._compute_initial_centroids(data)
        else:
            centroids = torch.zeros_like(self.centroids, device="cpu")
        self.centroids.copy_(centroids.to(self.centroids.device))
        if self._synced():
            broadcast_from_rank0_(self.centroids)
        self.initialized.fill_(True)
        self._bank.clear()
        logger.info(
            "k-means centroids initialised at step %d (%s, %d vectors, K=%d)",
            int(self.step),
            self.init_method,
            data.shape[0],
            self.num_clusters,
        )
        return True

    def _compute_initial_centroids(self, data: torch.Tensor) -> torch.Tensor:
        if self.init_method == "faiss":
            return faiss_spherical_kmeans(data, self.num_clusters, self.kmeans_iterations, self.seed)
        generator = torch.Generator().manual_seed(self.seed + int(self.step))
        first = int(torch.randint(data.shape[0], (1,), generator=generator))
        return greedy_farthest_init(data, self.num_clusters, first)

    def extra_repr(self) -> str:
        return (
            f"K={self.num_clusters}, D={self.dim}, lr={self.lr}, update={self.update_mode}, "
            f"init={self.init_method}, synchronize={self.synchronize}"
        )
