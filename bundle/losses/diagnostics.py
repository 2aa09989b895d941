"""Collapse and alignment diagnostics of the local losses, computed without gradient at every step.

They answer the questions a researcher asks first when the local losses look inert: are the image tokens (or z2, or
f_RI) collapsed to one direction; is every sentence in one cluster; does a sentence find its own image-to-text feature.

For a set of unit vectors u_1..u_n [n, D]:
- `mean_pairwise_cosine`: mean of cos(u_i, u_j) over i != j (1 = all identical, about 0 for isotropic vectors);
- `std_ratio`: mean over the D dimensions of the standard deviation of the unit vectors, times sqrt(D) (SimSiam's
  collapse measure: about 1 for isotropic vectors, 0 for identical ones; about sqrt(1 - mean cosine) in between);
- `effective_rank`: exp of the entropy of the normalised singular values of [n, D] (Roy and Vetterli 2007): 1 when
  all rows are parallel, up to min(n, D) when they fill the space evenly.

The collapse rule (docs/method_notes.md) flags a set whose std_ratio is below COLLAPSE_STD_RATIO, and image tokens whose
mean cosine within one image is above COLLAPSE_WITHIN_COSINE (every position of an image says the same thing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Documented thresholds (method_notes.md, "Diagnostics"): std_ratio 0.2 is a mean pairwise cosine of about 0.96.
COLLAPSE_STD_RATIO = 0.2
COLLAPSE_WITHIN_COSINE = 0.95

# The report loss's own diagnostics (ClusterGuidedReportLoss returns them; CMCGNS passes them on).
REPORT_DIAGNOSTIC_KEYS = (
    "local_top1",
    "local_chance_top1",
    "assignment_entropy",
    "fn_mask_density",
    "hard_negative_cos",
    "duplicate_negative_density",
)
# Scalars the model adds to its output (logged with the loss terms, averaged over validation batches).
DIAGNOSTIC_KEYS = (
    "diag_tok_cos_within",
    "diag_tok_cos_across",
    "diag_tok_std",
    "diag_tok_erank",
    "diag_fri_cos_within",
    "diag_fri_cos_across",
    "diag_fri_std",
    "diag_fri_erank",
    "diag_z2_cos",
    "diag_z2_std",
    "diag_z2_erank",
    "diag_a1_mean",
    "diag_a1_entropy",
    "diag_a2_mean",
    "diag_a2_entropy",
) + REPORT_DIAGNOSTIC_KEYS


def mean_pairwise_cosine(unit: torch.Tensor) -> torch.Tensor:
    """unit [n, D] (rows of length 1) -> mean cosine over the n(n-1) ordered pairs i != j (0 when n < 2)."""
    n = unit.shape[0]
    if n < 2:
        return unit.new_zeros(())
    total = unit.sum(dim=0)
    return ((total @ total) - (unit * unit).sum()) / (n * (n - 1))


def within_and_across_cosine(unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """unit [B, P, D] -> (mean cosine between distinct tokens of one image, mean cosine between tokens of two
    different images), each over all such ordered pairs of the batch, without forming the [BP, BP] matrix."""
    b, p, _ = unit.shape
    squares = (unit * unit).sum()
    per_image = unit.sum(dim=1)  # [B, D]
    within_sum = (per_image * per_image).sum() - squares
    everything = per_image.sum(dim=0)
    across_sum = everything @ everything - squares - within_sum
    within = within_sum / max(b * p * (p - 1), 1)
    across = across_sum / max(b * p * (b - 1) * p, 1)
    return within, across


def std_ratio(unit: torch.Tensor) -> torch.Tensor:
    """unit [n, D] -> mean per-dimension (population) standard deviation times sqrt(D)."""
    if unit.shape[0] < 2:
        return unit.new_zeros(())
    return unit.std(dim=0, unbiased=False).mean() * math.sqrt(unit.shape[-1])


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """x [n, D] -> exp(entropy of singular values / their sum) (1 for a rank-one matrix)."""
    s = torch.linalg.svdvals(x.float())
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()


def normalised_entropy(weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of non-negative `weights` [R, M] renormalised over its valid entries (valid [R, M] bool),
    divided by log(number of valid entries): 1 = uniform, 0 = all weight on one entry. Mean over rows with at least
    two valid entries (0 when there are none)."""
    w = weights.float() * valid
    p = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
    count = valid.sum(dim=-1).float()
    rows = (count >= 2).float()  # weights instead of a boolean selection: no device sync
    normalised = entropy / count.clamp_min(2).log()
    return (normalised * rows).sum() / rows.sum().clamp_min(1)


def set_diagnostics(prefix: str, unit: torch.Tensor) -> dict[str, torch.Tensor]:
    """std ratio and effective rank of a [n, D] set of unit vectors, keyed `<prefix>_std`, `<prefix>_erank`."""
    return {f"{prefix}_std": std_ratio(unit), f"{prefix}_erank": effective_rank(unit)}


@torch.no_grad()
def local_diagnostics(
    image_tokens: torch.Tensor,
    text_to_image: torch.Tensor,
    image_to_text: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    valid: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Diagnostics of the local branch of one batch.

    image_tokens [B, P, D] (unit), text_to_image f_RI [B, P, D], image_to_text f_IR [B, S, D], a1 [B, S, P],
    a2 [B, P, S], valid [B, S] (bool). Returns 0-dim float tensors (no host synchronisation).
    """
    tokens = image_tokens.detach().float()
    fri = F.normalize(text_to_image.detach().float(), dim=-1)
    z2 = F.normalize(image_to_text.detach().float()[valid], dim=-1)
    out = {}
    out["diag_tok_cos_within"], out["diag_tok_cos_across"] = within_and_across_cosine(tokens)
    out.update(set_diagnostics("diag_tok", tokens.flatten(0, 1)))
    out["diag_fri_cos_within"], out["diag_fri_cos_across"] = within_and_across_cosine(fri)
    out.update(set_diagnostics("diag_fri", fri.flatten(0, 1)))
    out["diag_z2_cos"] = mean_pairwise_cosine(z2)
    out.update(set_diagnostics("diag_z2", z2))
    a1v = a1.detach()[valid]  # [N, P]: each sentence's weights over its image's tokens
    out["diag_a1_mean"] = a1v.float().mean()
    out["diag_a1_entropy"] = normalised_entropy(a1v, torch.ones_like(a1v, dtype=torch.bool))
    a2d = a2.detach().flatten(0, 1)  # [B*P, S]: each token's weights over its report's sentences
    a2_valid = valid.unsqueeze(1).expand(-1, a2.shape[1], -1).flatten(0, 1)
    out["diag_a2_mean"] = (a2d.float() * a2_valid).sum() / a2_valid.sum().clamp_min(1)
    out["diag_a2_entropy"] = normalised_entropy(a2d, a2_valid)
    return out


def collapse_findings(
    values: dict[str, float],
    std_threshold: float = COLLAPSE_STD_RATIO,
    within_threshold: float = COLLAPSE_WITHIN_COSINE,
) -> list[str]:
    """Human-readable collapse findings for (epoch-mean) diagnostic values; empty when nothing is collapsed."""
    findings = []
    for prefix, name in (
        ("diag_tok", "image tokens"),
        ("diag_z2", "z2 (image-to-text sentence features)"),
        ("diag_fri", "f_RI (text-to-image token features)"),
    ):
        value = values.get(f"{prefix}_std")
        if value is not None and value < std_threshold:
            findings.append(
                f"{name} collapsed: std ratio {value:.3f} < {std_threshold} "
                f"(effective rank {values.get(f'{prefix}_erank', float('nan')):.2f})"
            )
    within = values.get("diag_tok_cos_within")
    if within is not None and within > within_threshold:
        findings.append(
            f"image tokens of one image are nearly identical: mean cosine {within:.3f} > "
            f"{within_threshold} (no spatial information left in the local features)"
        )
    return findings
