"""Cluster-guided local report loss, the CM-CGNS core (method.md 4.4).

Works on all N valid sentences of the batch at once: z1 = normalise(sentence vectors), z2 = normalise(image-to-text
features of the same sentences). C = cos(z1, z2^T) / t; positives are the diagonal. Once the k-means state is
initialised, each z1_i gets a hard negative (its second-nearest centroid) and a boundary-margin loss keeps
same-cluster sentences (likely false negatives) between a lower and an upper margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bundle.losses.cluster_state import KMeansClusterState
from bundle.losses.distributed import all_reduce_sum_, distributed_ready

HARD_NEGATIVE_MODES = ("multiplicative", "additive")
BML_REDUCTIONS = ("masked", "all")
DUPLICATE_NEGATIVES = ("keep", "drop")
GATE_SCALES = ("cosine", "logits")


def hard_negative_logits(
    c: torch.Tensor,
    z1: torch.Tensor,
    z3: torch.Tensor,
    mode: str,
    temperature: float,
    weight: float = 3.0,
    bias: float = 0.0,
) -> torch.Tensor:
    """Append the hard-negative logits to C [N, N].

    multiplicative (published): [C | H * W] with H_ij = cos(z1_i, z3_j) / t and W = `weight` on the diagonal, 0
    elsewhere: the N-1 off-diagonal hard-negative logits are exactly 0 and still sit in the softmax denominator.
    additive (ClusterNS): one extra column cos(z1_i, z3_i) / t + bias.
    """
    if mode == "multiplicative":
        own = F.cosine_similarity(z1, z3, dim=-1) / temperature
        return torch.cat([c, torch.diag_embed(weight * own)], dim=1)
    if mode == "additive":
        own = F.cosine_similarity(z1, z3, dim=-1) / temperature + bias
        return torch.cat([c, own.unsqueeze(1)], dim=1)
    raise ValueError(f"hard_negative_mode must be one of {HARD_NEGATIVE_MODES}, got {mode!r}")


def boundary_margin_loss(
    c: torch.Tensor, mask: torch.Tensor, alpha: float, beta: float, reduction: str
) -> torch.Tensor:
    """BML on false negatives: delta_ij = (C_ij - C_ii) * M_ij; relu(delta + alpha) + relu(-delta - beta).

    reduction "all" (published): mean over all N^2 entries (unmasked entries add the constant alpha each);
    "masked": mean over the pairs with M_ij = 1 (0 when there are none).
    """
    delta = (c - c.diag().unsqueeze(1)) * mask
    per_pair = F.relu(delta + alpha) + F.relu(-delta - beta)
    if reduction == "all":
        return per_pair.mean()
    if reduction == "masked":
        pairs = mask.sum()
        return (per_pair * mask).sum() / pairs.clamp(min=1)
    raise ValueError(f"bml_reduction must be one of {BML_REDUCTIONS}, got {reduction!r}")


def assignment_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy of the cluster-assignment distribution (members per centroid, [K]) divided by log K: 1 when the
    members are spread evenly over all K clusters, 0 when they all fall into one."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy / math.log(counts.numel())


class ClusterGuidedReportLoss(nn.Module):
    """L_report = CE([C | hard negatives], arange(N)) + w_bml * BML; before initialisation CE(C, arange(N)).

    The k-means state (`self.state`) changes only in training mode: the start gate, the initialisation, the
    centroid update (before the hard negatives are chosen) and the step counter.

    Args:
        embed_dim: D.
        num_clusters: K.
        temperature: t in C = cos / t.
        start_cosine: the start gate; initialise once the mean of `gate_on` <= start_cosine.
        gate_on: "cosine" (mean cosine of z1 and z2, whatever the temperature; fixed) or "logits" (mean of
            C = cos / t, the published comparison). The two agree at the published t = 1.
        start_step: the gate stays closed before this training step (0 = published). From random weights the
            mean cosine is about 0 at step 0, so the published gate opens at once and the centroids are fitted to
            the features of an untrained network (docs/method_notes.md).
        hard_negative_mode, hard_negative_weight, hard_negative_bias: see `hard_negative_logits`.
        bml_alpha, bml_beta, bml_weight, bml_reduction: see `boundary_margin_loss`.
        duplicate_negatives: "keep" (published): the same sentence in another report of the batch ("the lungs are
            clear.") is a negative like any other; "drop": it leaves the InfoNCE denominator (a known false
            negative; needs the sentence keys, bundle/networks/sentence_features.sentence_keys).
        centroid_lr, centroid_update, centroid_init, bank_batches, kmeans_iterations, kmeans_seed, sync_centroids:
            passed to `KMeansClusterState`.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        num_clusters: int = 128,
        temperature: float = 1.0,
        start_cosine: float = 0.4,
        gate_on: str = "cosine",
        start_step: int = 0,
        centroid_lr: float = 0.001,
        centroid_update: str = "mean",
        centroid_init: str = "faiss",
        bank_batches: int = 10,
        kmeans_iterations: int = 20,
        kmeans_seed: int = 0,
        sync_centroids: bool = True,
        hard_negative_mode: str = "multiplicative",
        hard_negative_weight: float = 3.0,
        hard_negative_bias: float = 0.0,
        bml_alpha: float = 0.2,
        bml_beta: float = 0.5,
        bml_weight: float = 1e-4,
        bml_reduction: str = "masked",
        duplicate_negatives: str = "keep",
    ):
        super().__init__()
        if duplicate_negatives not in DUPLICATE_NEGATIVES:
            raise ValueError(f"duplicate_negatives must be one of {DUPLICATE_NEGATIVES}, got {duplicate_negatives!r}")
        self.duplicate_negatives = duplicate_negatives
        if hard_negative_mode not in HARD_NEGATIVE_MODES:
            raise ValueError(f"hard_negative_mode must be one of {HARD_NEGATIVE_MODES}, got {hard_negative_mode!r}")
        if bml_reduction not in BML_REDUCTIONS:
            raise ValueError(f"bml_reduction must be one of {BML_REDUCTIONS}, got {bml_reduction!r}")
        if gate_on not in GATE_SCALES:
            raise ValueError(f"gate_on must be one of {GATE_SCALES}, got {gate_on!r}")
        self.gate_on = gate_on
        self.start_step = int(start_step)
        self.temperature, self.start_cosine = temperature, start_cosine
        self.hard_negative_mode, self.hard_negative_weight = hard_negative_mode, hard_negative_weight
        self.hard_negative_bias = hard_negative_bias
        self.bml_alpha, self.bml_beta = bml_alpha, bml_beta
        self.bml_weight, self.bml_reduction = bml_weight, bml_reduction
        self.state = KMeansClusterState(
            num_clusters=num_clusters,
            dim=embed_dim,
            lr=centroid_lr,
            update_mode=centroid_update,
            init_method=centroid_init,
            bank_batches=bank_batches,
            kmeans_iterations=kmeans_iterations,
            seed=kmeans_seed,
            synchronize=sync_centroids,
        )

    def _gate_value(self, c: torch.Tensor) -> float:
        """mean(C) (or mean cosine); averaged over all ranks' entries when the centroids are synchronised."""
        scale = self.temperature if self.gate_on == "cosine" else 1.0
        total = torch.stack([c.detach().sum() * scale, torch.tensor(float(c.numel()), device=c.device)])
        if self.state.synchronize and distributed_ready():
            all_reduce_sum_(total)
        return float(total[0] / total[1])

    def forward(
        self, sentence_embed: torch.Tensor, image_to_text: torch.Tensor, sentence_keys: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """sentence_embed, image_to_text: [N, D], row i of both belongs to the same sentence; sentence_keys [N]
        (equal for the same sentence text) is needed with duplicate_negatives "drop"."""
        z1 = F.normalize(sentence_embed.float(), dim=-1)
        z2 = F.normalize(image_to_text.float(), dim=-1)
        c = z1 @ z2.t() / self.temperature
        state = self.state
        zero = c.new_zeros(())
        usage, bml, use_hard = zero, zero, False
        entropy, density, hard_cos = zero, zero, zero
        if not state.is_initialized:
            if self.training:
                gate_open = int(state.step) >= self.start_step and self._gate_value(c) <= self.start_cosine
                state.observe_and_maybe_initialise(z2, gate_open=gate_open)
            # The step that initialises still uses plain InfoNCE.
        else:
            # The update sees detached z2 and runs before the hard negatives are chosen (published order).
            counts = state.update(z2) if self.training else state.member_counts(z2)
            usage = (counts > 0).float().mean()
            entropy = assignment_entropy(counts)
            use_hard = True
        if self.training:
            state.step += 1

        logits = c
        duplicates = zero
        if self.duplicate_negatives == "drop":
            if sentence_keys is None:
                raise ValueError('duplicate_negatives "drop" needs sentence_keys')
            same = sentence_keys.unsqueeze(0) == sentence_keys.unsqueeze(1)
            same.fill_diagonal_(False)
            logits = c.masked_fill(same, float("-inf"))
            duplicates = same.sum() / max(c.shape[0] * (c.shape[0] - 1), 1)
        if use_hard:
            z3 = state.second_nearest_centroids(z1)
            mask = state.same_cluster_mask(z1)
            bml = boundary_margin_loss(c, mask, self.bml_alpha, self.bml_beta, self.bml_reduction)
            n = c.shape[0]
            density = mask.sum() / max(n * (n - 1), 1)
            hard_cos = F.cosine_similarity(z1.detach(), z3, dim=-1).mean()
            logits = hard_negative_logits(
                logits,
                z1,
                z3,
                self.hard_negative_mode,
                self.temperature,
                self.hard_negative_weight,
                self.hard_negative_bias,
            )
        labels = torch.arange(c.shape[0], device=c.device)
        ce = F.cross_entropy(logits, labels)
        return {
            "loss": ce + self.bml_weight * bml if use_hard else ce,
            "ce": ce,
            "bml": bml,
            "kmeans_initialized": state.initialized.float(),
            "centroid_usage": usage,
            # diagnostics (no gradient): local report retrieval (each z1 finds its own z2 among the N of C)
            "local_top1": (c.detach().argmax(dim=1) == labels).float().mean(),
            "local_chance_top1": c.new_tensor(1.0 / c.shape[0]),
            "assignment_entropy": entropy,
            "fn_mask_density": density,
            "hard_negative_cos": hard_cos,
            "duplicate_negative_density": duplicates,
        }
