"""MGCA's segmentation loss (method.md 5): 10 * focal(gamma 2) - log(soft Dice), on logits.

Published form (mgca/utils/segmentation_loss.py, MixedLoss(alpha=10)): focal = mean over all pixels of
(1 - p_t)^2 * BCE (no alpha weighting), soft Dice = (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1) over the whole batch
(one channel). Built from MONAI: FocalLoss(gamma=2, alpha=None, sigmoid, mean) computes the same focal term, and
1 - DiceLoss(sigmoid, batch=True, smooth 1/1) is that soft Dice per channel. With several channels (per-class masks)
the -log(soft Dice) term is averaged over channels; with one channel it is exactly MGCA's.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn


class MGCASegmentationLoss(nn.Module):
    def __init__(self, focal_weight: float = 10.0, gamma: float = 2.0, smooth: float = 1.0):
        super().__init__()
        self.focal_weight = focal_weight
        self.focal = FocalLoss(gamma=gamma, alpha=None, use_softmax=False, reduction="mean")
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=smooth, smooth_dr=smooth, reduction="none")

    def soft_dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-channel soft Dice [C] over the batch."""
        return 1.0 - self.dice(logits, target).reshape(-1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(target.shape)} differ in shape")
        target = target.float()
        return self.focal_weight * self.focal(logits, target) - torch.log(self.soft_dice(logits, target)).mean()
