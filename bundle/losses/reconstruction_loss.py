"""CM-MIR reconstruction loss (method.md 4.5): scaled L1 over the whole image, and over the masked regions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_mask_to_pixels(token_mask: torch.Tensor, grid_size: int, size: tuple[int, int]) -> torch.Tensor:
    """[B, P] (True = masked token, P = grid_size^2, row-major positions) -> [B, 1, H, W] float pixel mask."""
    grid = token_mask.float().view(token_mask.shape[0], 1, grid_size, grid_size)
    return F.interpolate(grid, size=size, mode="nearest")


def reconstruction_l1_loss(
    reconstruction: torch.Tensor,
    image: torch.Tensor,
    scale: float = 10.0,
    pixel_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (scale * mean |x_hat - x| over the whole image, the same over masked pixels only).

    When the sizes differ the target is resized to the reconstruction (bilinear, align_corners=True, as published).
    pixel_mask: [B, 1, H, W] of the reconstruction's size, 1 = masked; None means every pixel counts as masked
    (channel masking touches every position).
    """
    if reconstruction.shape[1] != image.shape[1]:
        raise ValueError(
            f"reconstruction has {reconstruction.shape[1]} channels but the image has {image.shape[1]}: "
            "set the decoder's out_channels to the image's channel count"
        )
    if image.shape[-2:] != reconstruction.shape[-2:]:
        image = F.interpolate(image, size=reconstruction.shape[-2:], mode="bilinear", align_corners=True)
    error = (reconstruction - image).abs()
    loss = scale * error.mean()
    if pixel_mask is None:
        return loss, loss.detach()
    masked = (error * pixel_mask).sum() / (pixel_mask.sum() * error.shape[1]).clamp(min=1)
    return loss, scale * masked.detach()
