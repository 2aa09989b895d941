"""Local image loss, SimSiam style, between image tokens and their text-to-image features (method.md 4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocalImageSimSiamLoss(nn.Module):
    """L_img = mean_b -( mean_p cos(h(I_p), sg(f_RI_p)) + mean_p cos(h(f_RI_p), sg(I_p)) ) / 2.

    Owns the predictor h = Linear(D, D/2) -> ReLU -> Linear(D/2, D). Every image has the same number of tokens P,
    so the mean over b of the per-image means is the mean over all B*P tokens.
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.predictor = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2), nn.ReLU(inplace=True), nn.Linear(embed_dim // 2, embed_dim)
        )

    def forward(self, image_tokens: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
        """image_tokens, text_to_image: [B, P, D]."""
        p_image = self.predictor(image_tokens)
        p_text = self.predictor(text_to_image)
        # The targets are stop-gradient copies: SimSiam's guard against collapse.
        image_side = F.cosine_similarity(p_image, text_to_image.detach(), dim=-1).mean()
        text_side = F.cosine_similarity(p_text, image_tokens.detach(), dim=-1).mean()
        return -(image_side + text_side) / 2
