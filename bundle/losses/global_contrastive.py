"""Global image-report contrastive loss (CLIP / InfoNCE, symmetric) with a learnable temperature (method.md 4.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bundle.losses.distributed import all_gather_with_grad


def retrieval_top_k(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Fraction of rows whose label is among the k largest logits (k capped at the number of columns)."""
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [hits[:, : min(k, largest)].any(dim=1).float().mean() for k in ks]


class GlobalContrastiveLoss(nn.Module):
    """L = (CE(s I T_all^T, y) + CE(s T I_all^T, y)) / 2 with s = exp(logit_scale).

    Under torch.distributed the other modality is gathered from every rank with gradient and the labels are offset
    by this rank's position in the gathered batch.

    Args:
        temperature_init: initial tau; logit_scale starts at log(1 / tau).
        max_logit_scale_exp: clamp for s (100 in fixed mode); None = no clamp (official).
    """

    def __init__(self, temperature_init: float = 0.1, max_logit_scale_exp: float | None = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self.max_logit_scale_exp = max_logit_scale_exp

    def scale(self) -> torch.Tensor:
        s = self.logit_scale.exp()
        if self.max_logit_scale_exp is not None:
            s = s.clamp(max=self.max_logit_scale_exp)
        return s

    def forward(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> dict[str, torch.Tensor]:
        """image_embed, text_embed: [B, D], L2-normalised, row b of each belongs to the same study."""
        s = self.scale()
        image_all, offset = all_gather_with_grad(image_embed)
        text_all, _ = all_gather_with_grad(text_embed)
        labels = offset + torch.arange(image_embed.shape[0], device=image_embed.device)
        logits_per_image = s * image_embed @ text_all.t()
        logits_per_text = s * text_embed @ image_all.t()
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        i2t_1, i2t_5 = retrieval_top_k(logits_per_image.detach(), labels)
        t2i_1, t2i_5 = retrieval_top_k(logits_per_text.detach(), labels)
        return {
            "loss": loss,
            "acc_i2t_top1": i2t_1,
            "acc_i2t_top5": i2t_5,
            "acc_t2i_top1": t2i_1,
            "acc_t2i_top5": t2i_5,
            "logit_scale": s.detach(),
        }
