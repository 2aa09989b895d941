"""Image encoders over MONAI networks: local tokens as positions and a global vector (method.md 2).

Both encoders take [B, C, H, W] images in [-1, 1] and return (local [B, P, F], global [B, F]) where P = h * w in
row-major order (`feature_map.flatten(2).transpose(1, 2)`) and F is the encoder's feature width. A 1-channel image
is repeated to 3 channels when the encoder was built for RGB weights. `forward_features` gives the last feature map
[B, F, h, w] for downstream heads. The module's state_dict is what the bundle exports as models/image_encoder.pt:
keys "backbone.<MONAI network keys>" plus "attention_pool.*" for ResNets.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from monai.networks.nets import ViT, resnet18, resnet50
from torch import nn

from bundle.networks.attention_pool import MeanQueryAttentionPool
from bundle.networks.torchvision_resnet_weights import load_torchvision_resnet_weights
from bundle.networks.vit_weights import load_timm_vit_weights

RESNETS = {"resnet18": (resnet18, 512), "resnet50": (resnet50, 2048)}
VITS = ("vit_b16", "vit")


def _match_channels(image: torch.Tensor, in_channels: int) -> torch.Tensor:
    if image.shape[1] == in_channels:
        return image
    if image.shape[1] == 1 and in_channels == 3:
        return image.expand(-1, 3, -1, -1)
    raise ValueError(f"image has {image.shape[1]} channels, the encoder expects {in_channels}")


def resnet_grid_size(image_size: int) -> int:
    """Side of the last feature map: conv1 (stride 2), max pool and layers 2-4 each halve it, rounding up."""
    side = image_size
    for _ in range(5):
        side = math.ceil(side / 2)
    return side


class ResNetImageEncoder(nn.Module):
    """MONAI ResNet (torchvision layout) run to layer4, plus an attention pool for the global vector.

    Args:
        name: "resnet18" or "resnet50".
        in_channels: 1 or 3 (conv1 input channels).
        image_size: square input side, fixes the pool's positional embedding (P + 1 rows).
        pool_num_heads: heads of the attention pool.
        pretrained_weights: optional local torchvision-format ResNet state dict file (ImageNet); never downloaded.
    """

    def __init__(
        self,
        name: str = "resnet50",
        in_channels: int = 1,
        image_size: int = 224,
        pool_num_heads: int = 8,
        pretrained_weights: str | Path | None = None,
    ):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}")
        builder, self.feature_dim = RESNETS[name]
        self.in_channels, self.image_size = in_channels, image_size
        self.backbone = builder(
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,  # no classifier: an unused module would sit in the optimiser
        )
        if pretrained_weights:
            load_torchvision_resnet_weights(self.backbone, pretrained_weights, in_channels)
        self.grid_size = resnet_grid_size(image_size)
        self.attention_pool = MeanQueryAttentionPool(
            self.feature_dim, num_heads=pool_num_heads, num_positions=self.grid_size**2
        )

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> last feature map [B, F, h, w] (before any pooling)."""
        net = self.backbone
        x = net.act(net.bn1(net.conv1(_match_channels(image, self.in_channels))))
        x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.forward_features(image).flatten(2).transpose(1, 2)  # [B, h*w, F]: positions, not a raw view
        return local, self.attention_pool(local)


class ViTImageEncoder(nn.Module):
    """MONAI ViT with a CLS token: patch tokens are the local tokens, the CLS token is the global vector.

    MONAI's classification head and the blocks' unused cross-attention norms are removed (unused modules would sit
    in the optimiser); ViT.forward skips a missing head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        pretrained_weights: str | Path | None = None,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.in_channels, self.image_size, self.feature_dim = in_channels, image_size, hidden_size
        self.grid_size = image_size // patch_size
        self.backbone = ViT(
            in_channels=in_channels,
            img_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,  # creates the CLS token
            dropout_rate=dropout_rate,
            spatial_dims=2,
            qkv_bias=True,
        )
        del self.backbone.classification_head
        for block in self.backbone.blocks:
            # MONAI builds this LayerNorm even without cross-attention and never calls it: an unused module.
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()
        if pretrained_weights:
            load_timm_vit_weights(self.backbone, pretrained_weights, in_channels, self.grid_size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, _ = self.backbone(_match_channels(image, self.in_channels))  # [B, 1 + P, F], layer-normed
        return tokens[:, 1:], tokens[:, 0]

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        local, _ = self.forward(image)
        return local.transpose(1, 2).reshape(local.shape[0], self.feature_dim, self.grid_size, self.grid_size)


def build_image_encoder(
    name: str = "resnet50",
    in_channels: int = 1,
    image_size: int = 224,
    pool_num_heads: int = 8,
    pretrained_weights: str | Path | None = None,
    vit_patch_size: int = 16,
    vit_hidden_size: int = 768,
    vit_mlp_dim: int = 3072,
    vit_num_layers: int = 12,
    vit_num_heads: int = 12,
) -> ResNetImageEncoder | ViTImageEncoder:
    """ "resnet18" / "resnet50" / "vit_b16" (ViT-B/16 by default; the vit_* arguments make it smaller for demos)."""
    if name in RESNETS:
        return ResNetImageEncoder(name, in_channels, image_size, pool_num_heads, pretrained_weights)
    if name in VITS:
        return ViTImageEncoder(
            in_channels,
            image_size,
            vit_patch_size,
            vit_hidden_size,
            vit_mlp_dim,
            vit_num_layers,
            vit_num_heads,
            pretrained_weights=pretrained_weights,
        )
    raise ValueError(f"unknown image encoder {name!r}; choose one of {sorted(RESNETS) + list(VITS)}")
