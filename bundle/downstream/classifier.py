"""A classifier around an image encoder: linear probe on the frozen encoder, or full fine-tuning (method.md 5).

Linear probe (MGCA protocol): the encoder's last feature map is globally average-pooled ("avg") and fed to one
linear layer; pooling="global" uses the encoder's own global vector instead (the pretrained attention pool of a
ResNet, the CLS token of a ViT). The frozen encoder always runs in eval mode under torch.no_grad, even after
.train(): its batch-norm running statistics never move and no graph is kept for it.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("linear_probe", "fine_tune")
POOLINGS = ("avg", "global")


class EncoderClassifier(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        mode: str = "linear_probe",
        pooling: str = "avg",
        dropout: float = 0.0,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.encoder, self.mode, self.pooling = encoder, mode, pooling
        self.frozen = mode == "linear_probe"
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # batch norm keeps its pretrained running statistics
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> pooled features [B, F] (what the linear head sees; cacheable when frozen)."""
        if self.frozen:
            with torch.no_grad():
                return self._pool(image)
        return self._pool(image)

    def _pool(self, image: torch.Tensor) -> torch.Tensor:
        if self.pooling == "global":
            return self.encoder(image)[1]
        return self.encoder.forward_features(image).mean(dim=(2, 3))

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classify_features(self.features(image))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
