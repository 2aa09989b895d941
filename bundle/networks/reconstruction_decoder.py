"""CM-MIR: mask the projected local image tokens, fuse them with the text-to-image features, decode the image
(method.md 4.5).

Masking (`mask_image_tokens`), drawn only in training:
- "positions" (fixed): zero a random `ratio` of token POSITIONS of each image (exactly round(ratio * P) of them).
- "official": what the published code does; ResNet: Bernoulli-drop `ratio` of the CHANNELS of each image at every
  position, no rescaling; ViT: Bernoulli-drop positions and rescale the kept ones by 1 / (1 - ratio).

Decoders end in a convolutional head: stages of (3x3 conv -> ReLU -> bilinear x2) with widths `channels` and then
`out_channels`; the last stage has no ReLU unless `relu_before_output` (official: ReLU before the final Tanh, so
nothing below 0 can be produced although the target lies in [-1, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MASK_MODES = ("positions", "official")


def mask_image_tokens(
    tokens: torch.Tensor, ratio: float, mode: str, encoder_kind: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tokens [B, P, D] -> (masked tokens, token mask [B, P] with True = masked position, or None when every
    position is partly masked (official ResNet channel dropping))."""
    batch, positions, width = tokens.shape
    if mode == "positions":
        dropped = round(ratio * positions)
        rank = torch.rand(batch, positions, device=tokens.device).argsort(dim=1).argsort(dim=1)
        masked = rank < dropped
        return tokens * (~masked).unsqueeze(-1).to(tokens.dtype), masked
    if mode == "official":
        if encoder_kind == "resnet":
            keep = torch.bernoulli(tokens.new_full((batch, 1, width), 1 - ratio))
            return tokens * keep, None
        keep = torch.bernoulli(tokens.new_full((batch, positions, 1), 1 - ratio))
        return tokens * keep / (1 - ratio), keep.squeeze(-1) == 0
    raise ValueError(f"recon_mask_mode must be one of {MASK_MODES}, got {mode!r}")


def conv_upsampling_head(
    in_channels: int, grid_size: int, image_size: int, channels, out_channels: int, relu_before_output: bool
) -> nn.Sequential:
    """(3x3 conv -> ReLU -> bilinear x2) stages from grid_size to image_size, then Tanh."""
    stages = math.log2(image_size / grid_size)
    if stages != int(stages) or stages < 1:
        raise ValueError(f"image_size {image_size} must be grid_size {grid_size} times a power of two")
    stages = int(stages)
    if len(channels) < stages - 1:
        raise ValueError(f"{stages} decoder stages need {stages - 1} hidden widths, got {list(channels)}")
    widths = list(channels[: stages - 1]) + [out_channels]
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if i < len(widths) - 1 or relu_before_output:
            layers.append(nn.ReLU())
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        in_channels = width
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def tokens_to_map(tokens: torch.Tensor, grid_size: int) -> torch.Tensor:
    """[B, P, D] in row-major positions -> [B, D, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_size, grid_size)


class ResNetReconstructionDecoder(nn.Module):
    """Concatenate masked image tokens and f_RI along the feature axis ([B, 2D, h, w]) and decode."""

    def __init__(
        self,
        embed_dim: int,
        grid_size: int,
        image_size: int,
        out_channels: int = 1,
        channels=(512, 256, 128, 64),
        relu_before_output: bool = False,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.head = conv_upsampling_head(
            2 * embed_dim, grid_size, image_size, channels, out_channels, relu_before_output
        )

    def forward(self, masked_image_tokens: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([masked_image_tokens, text_to_image], dim=-1)
        return self.head(tokens_to_map(fused, self.grid_size))


class ViTReconstructionDecoder(nn.Module):
    """Fuse by multi-head attention (masked image tokens query f_RI), add a positional embedding, run a small
    transformer decoder stack (memory = the fused tokens), then the convolutional head.

    share_layer_weights / batch_first=False reproduce the published bugs (one layer's weights reused for every
    layer; [B, P, D] fed to a sequence-first layer, so attention runs across the batch).
    """

    def __init__(
        self,
        embed_dim: int,
        grid_size: int,
        image_size: int,
        out_channels: int = 1,
        channels=(512, 256, 128, 64),
        relu_before_output: bool = False,
        num_heads: int = 8,
        num_layers: int = 6,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        share_layer_weights: bool = False,
        batch_first: bool = True,
    ):
        super().__init__()
        self.grid_size, self.num_layers = grid_size, num_layers
        self.fusion = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.positional_embedding = nn.Parameter(torch.zeros(grid_size**2, embed_dim))

        def layer() -> nn.TransformerDecoderLayer:
            return nn.TransformerDecoderLayer(
                embed_dim, num_heads, ff_dim, dropout=dropout, activation="relu", batch_first=batch_first
            )

        self.layers = nn.ModuleList([layer()] if share_layer_weights else [layer() for _ in range(num_layers)])
        self.head = conv_upsampling_head(embed_dim, grid_size, image_size, channels, out_channels, relu_before_output)

    def forward(self, masked_image_tokens: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
        fused, _ = self.fusion(masked_image_tokens, text_to_image, text_to_image, need_weights=False)
        memory = fused + self.positional_embedding.to(fused.dtype)
        z = memory
        for i in range(self.num_layers):
            z = self.layers[i % len(self.layers)](z, memory)
        return self.head(tokens_to_map(z, self.grid_size))
