"""Local image loss, SimSiam style, between image tokens and their text-to-image features (method.md 4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PREDICTOR_NORMS = ("none", "batchnorm")


class LocalImageSimSiamLoss(nn.Module):
    """L_img = mean_b -( mean_p cos(h(I_p), sg(f_RI_p)) + mean_p cos(h(f_RI_p), sg(I_p)) ) / 2.

    Owns the predictor h = Linear(D, D/2) -> ReLU -> Linear(D/2, D). Every image has the same number of tokens P,
    so the mean over b of the per-image means is the mean over all B*P tokens.

    Args:
        embed_dim: D.
        predictor_norm: "none" (published) or "batchnorm": BatchNorm1d after the hidden layer of h, as SimSiam's own
            predictor has (SimSiam relies on it against collapse). Statistics are taken over all B*P tokens of
            each branch separately, in training and in evaluation.
    """

    def __init__(self, embed_dim: int, predictor_norm: str = "none"):
        super().__init__()
        if predictor_norm not in PREDICTOR_NORMS:
            raise ValueError(f"predictor_norm must be one of {PREDICTOR_NORMS}, got {predictor_norm!r}")
        hidden = embed_dim // 2
        # Batch statistics in training and evaluation alike (no running buffers): the predictor only serves the loss,
        # and per-rank running statistics would make the ranks' model states differ under DDP.
        norm = [nn.BatchNorm1d(hidden, track_running_stats=False)] if predictor_norm == "batchnorm" else []
        self.predictor = nn.Sequential(
            nn.Linear(embed_dim, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim)
        )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """h over the last axis of [..., D] (BatchNorm1d needs rows, so tokens are flattened first)."""
        return self.predictor(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    def forward(self, image_tokens: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
        """image_tokens, text_to_image: [B, P, D]."""
        p_image = self.predict(image_tokens)
        p_text = self.predict(text_to_image)
        # The targets are stop-gradient copies: SimSiam's guard against collapse.
        image_side = F.cosine_similarity(p_image, text_to_image.detach(), dim=-1).mean()
        text_side = F.cosine_similarity(p_text, image_tokens.detach(), dim=-1).mean()
        return -(image_side + text_side) / 2
