"""Attention pooling with a mean-token query (CLIP's AttentionPool2d), batched with an optional padding mask.

Used twice (method.md 2 and 3): over a ResNet's local image tokens (with a learned positional embedding of
P + 1 positions) and over the valid sentence vectors of each report (no positional embedding, padded sentences
masked out). The mean token is prepended to the sequence; only its output is returned, so only it is used as query
(the outputs of the other positions would be discarded anyway).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class MeanQueryAttentionPool(nn.Module):
    """Pool [B, T, C] tokens to [B, C_out].

    Args:
        embed_dim: C.
        num_heads: attention heads (8 in the method).
        num_positions: T for a learned positional embedding of T + 1 rows (image tokens); None for no positions.
        output_dim: width of the output projection (default C).
    """

    def __init__(self, embed_dim: int, num_heads: int = 8, num_positions: int | None = None, output_dim=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        if num_positions is None:
            self.register_parameter("positional_embedding", None)
        else:
            self.positional_embedding = nn.Parameter(torch.randn(num_positions + 1, embed_dim) / embed_dim**0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T, C]; valid [B, T] bool (True = a real token) or None when every token is real."""
        if valid is None:
            mean = tokens.mean(dim=1, keepdim=True)
        else:
            weights = valid.to(tokens.dtype).unsqueeze(-1)
            mean = (tokens * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)
        x = torch.cat([mean, tokens], dim=1)  # [B, T + 1, C]
        if self.positional_embedding is not None:
            if x.shape[1] != self.positional_embedding.shape[0]:
                raise ValueError(
                    f"attention pool built for {self.positional_embedding.shape[0] - 1} tokens, got {tokens.shape[1]}"
                )
            x = x + self.positional_embedding.to(x.dtype)
        padding: Optional[torch.Tensor] = None  # typed for TorchScript (models/image_encoder.ts)
        if valid is not None:
            padding = torch.cat([torch.zeros_like(valid[:, :1]), ~valid], dim=1)  # True = ignore
        seq_first = x.transpose(0, 1)
        pooled, _ = F.multi_head_attention_forward(
            query=seq_first[:1],
            key=seq_first,
            value=seq_first,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            key_padding_mask=padding,
            need_weights=False,
        )
        return pooled[0]
