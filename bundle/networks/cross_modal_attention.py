"""Local cross-modal attention between image tokens and sentence vectors, batched with padding masks (method.md 4.2).

Single head, sigmoid weights scaled by 1/sqrt(D), separate Q/K/V maps per modality, no output projection, residual
or norm. image-to-text: each sentence attends over its own image's tokens; text-to-image: each image token attends
over its own report's sentences. Padded sentences get zero weight, so they contribute exactly nothing.
The weights A1 [B, S, P] and A2 [B, P, S] are the sentence-to-region grounding maps shown to users.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class CrossModalOutput(NamedTuple):
    image_to_text: torch.Tensor  # f_IR [B, S, D], one vector per sentence (zero rows for padding)
    text_to_image: torch.Tensor  # f_RI [B, P, D], one vector per image token
    attn_image_to_text: torch.Tensor  # A1 [B, S, P] (zero rows for padding)
    attn_text_to_image: torch.Tensor  # A2 [B, P, S] (zero columns for padding)


NORMALISATIONS = ("sigmoid", "softmax")


class SigmoidCrossModalAttention(nn.Module):
    """Args:
    embed_dim: D.
    logit_scale: None (published): the constant 1/sqrt(D). A number: the initial value of a learnable scale
        of the attention logits (kept in log space, clamped at `max_logit_scale`). Why it exists: the inputs are
        unit vectors, so with default-initialised Q/K maps the logits q.k/sqrt(D) are about 0.01 and every
        sigmoid weight sits at 0.5: each sentence attends to every region alike and the local losses see no
        structure (docs/method_notes.md).
    learn_logit_scale: train that scale (True) or keep it fixed at `logit_scale` (False).
    normalisation: "sigmoid" (published): every weight on its own in (0, 1). "softmax": each sentence's weights
        over its image's tokens (A1) and each token's weights over its report's valid sentences (A2) sum to 1.
        Why it exists: an unnormalised gate carries the same information when it attends to the region a
        sentence names or to everything else, and on the demo the pretraining seed decided which (docs/
        method_notes.md, "Grounding"); a softmax makes the weights compete for the named region.
    """

    def __init__(
        self,
        embed_dim: int,
        logit_scale: float | None = None,
        learn_logit_scale: bool = True,
        max_logit_scale: float = 100.0,
        normalisation: str = "sigmoid",
    ):
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.normalisation = normalisation
        self.fixed_scale = 1.0 / math.sqrt(embed_dim) if logit_scale is None else None
        self.max_logit_scale = max_logit_scale
        if logit_scale is not None:
            value = torch.tensor(math.log(logit_scale))
            if learn_logit_scale:
                self.log_logit_scale = nn.Parameter(value)
            else:
                self.register_buffer("log_logit_scale", value)
        self.q_image = nn.Linear(embed_dim, embed_dim)
        self.k_image = nn.Linear(embed_dim, embed_dim)
        self.v_image = nn.Linear(embed_dim, embed_dim)
        self.q_text = nn.Linear(embed_dim, embed_dim)
        self.k_text = nn.Linear(embed_dim, embed_dim)
        self.v_text = nn.Linear(embed_dim, embed_dim)

    @property
    def scale(self) -> float | torch.Tensor:
        """The factor of the attention logits: 1/sqrt(D) (published) or the learnable scale."""
        if self.fixed_scale is not None:
            return self.fixed_scale
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, image_tokens: torch.Tensor, sentences: torch.Tensor, valid: torch.Tensor) -> CrossModalOutput:
        """image_tokens [B, P, D], sentences [B, S, D], valid [B, S] bool."""
        keep = valid.to(sentences.dtype)
        scale = self.scale
        logits1 = self.q_text(sentences) @ self.k_image(image_tokens).transpose(1, 2) * scale  # [B, S, P]
        logits2 = self.q_image(image_tokens) @ self.k_text(sentences).transpose(1, 2) * scale  # [B, P, S]
        if self.normalisation == "softmax":
            a1 = torch.softmax(logits1, dim=-1)
            a2 = torch.softmax(logits2.masked_fill(~valid.unsqueeze(1), float("-inf")), dim=-1)
        else:
            a1, a2 = torch.sigmoid(logits1), torch.sigmoid(logits2)
        a1 = a1 * keep.unsqueeze(-1)
        a2 = a2 * keep.unsqueeze(1)
        return CrossModalOutput(a1 @ self.v_image(image_tokens), a2 @ self.v_text(sentences), a1, a2)
