"""A U-Net decoder over the pretrained image encoder (method.md 5: frozen encoder, U-Net decoder trained).

ResNet encoders: the feature pyramid of the published code's smp U-Net over ResNet-50 - the stem (conv1-bn1-relu,
1/2, before the max pool) and layer1-4 (1/4 ... 1/32) - decoded by MONAI's FlexibleUNet decoder
(`monai.networks.nets.flexible_unet.UNetDecoder`, itself modelled on smp): five blocks of nearest x2 upsampling,
concatenation with the skip, two conv-BN-ReLU; no skip in the last block; a 3x3 conv segmentation head. As in smp the
upsampled features keep their channels (pre_conv=None; FlexibleUNet's default halves them with a conv first).

ViT encoders: a UNETR-style decoder (MONAI's UNETR blocks) over the patch tokens of blocks L/4, L/2, 3L/4 and the
final (layer-normed) tokens, plus a conv block on the input image; patch size 16.

Modes: "frozen" (the protocol): the encoder's parameters get no gradient, it stays in eval() even after .train() (its
batch-norm running statistics never move) and runs under torch.no_grad; "fine_tune": everything trains.
The output is logits [B, num_classes, H, W] at the input size (sigmoid per channel: one foreground class, or one
channel per class).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from bundle.networks.image_encoders import ResNetImageEncoder, ViTImageEncoder, _match_channels

MODES = ("frozen", "fine_tune")
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp.Unet's default, used by the published code


def resnet_pyramid_channels(encoder: ResNetImageEncoder) -> list[int]:
    """Channels of stem, layer1, ..., layer4 (resnet18: 64, 64, 128, 256, 512; resnet50: 64, 256, ..., 2048)."""
    net = encoder.backbone
    return [net.bn1.num_features] + [_block_out(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]


def _block_out(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def resnet_pyramid(encoder: ResNetImageEncoder, image: torch.Tensor) -> list[torch.Tensor]:
    """[stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)] of the bundle's ResNet encoder."""
    net = encoder.backbone
    stem = net.act(net.bn1(net.conv1(_match_channels(image, encoder.in_channels))))
    features = [stem]
    x = net.maxpool(stem)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        features.append(x)
    return features


class _ResNetUNetDecoder(nn.Module):
    def __init__(self, encoder: ResNetImageEncoder, num_classes: int, decoder_channels):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 widths (one per decoder block), got {list(decoder_channels)}")
        encoder_channels = [encoder.in_channels] + resnet_pyramid_channels(encoder)
        self.decoder = UNetDecoder(
            spatial_dims=2,
            encoder_channels=encoder_channels,
            decoder_channels=list(decoder_channels),
            act=("relu", {"inplace": True}),
            norm="batch",
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv=None,
            interp_mode="nearest",
            align_corners=None,
            is_pad=False,
        )
        self.head = SegmentationHead(
            spatial_dims=2, in_channels=decoder_channels[-1], out_channels=num_classes, kernel_size=3, act=None
        )

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        # UNetDecoder drops features[0] (the input slot) and uses the others as skips, deepest first
        return self.head(self.decoder([image] + features, skip_connect=4))


def vit_skip_indices(num_layers: int) -> list[int]:
    """0-based indices of the blocks whose tokens feed the skips: L/4, L/2, 3L/4 (UNETR's 3, 6, 9 of 12)."""
    return [max(0, round(num_layers * k / 4) - 1) for k in (1, 2, 3)]


class _ViTUNETRDecoder(nn.Module):
    def __init__(self, encoder: ViTImageEncoder, num_classes: int, feature_size: int = 16, norm_name="instance"):
        super().__init__()
        if encoder.image_size // encoder.grid_size != 16:
            raise ValueError("the UNETR-style decoder needs patch size 16 (four x2 upsamplings)")
        hidden, fs = encoder.feature_dim, feature_size
        self.skip_indices = vit_skip_indices(len(encoder.backbone.blocks))
        kw = dict(spatial_dims=2, kernel_size=3, norm_name=norm_name)
        self.encoder1 = UnetrBasicBlock(
            in_channels=encoder.in_channels, out_channels=fs, stride=1, res_block=True, **kw
        )
        self.encoder2 = UnetrPrUpBlock(
            in_channels=hidden,
            out_channels=fs * 2,
            num_layer=2,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            res_block=True,
            **kw,
        )
        self.encoder3 = UnetrPrUpBlock(
            in_channels=hidden,
            out_channels=fs * 4,
            num_layer=1,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            res_block=True,
            **kw,
        )
        self.encoder4 = UnetrPrUpBlock(
            in_channels=hidden,
            out_channels=fs * 8,
            num_layer=0,
            stride=1,
            upsample_kernel_size=2,
            conv_block=True,
            res_block=True,
            **kw,
        )
        self.decoder5 = UnetrUpBlock(
            in_channels=hidden, out_channels=fs * 8, upsample_kernel_size=2, res_block=True, **kw
        )
        self.decoder4 = UnetrUpBlock(
            in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, res_block=True, **kw
        )
        self.decoder3 = UnetrUpBlock(
            in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, res_block=True, **kw
        )
        self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=2, res_block=True, **kw)
        self.out = UnetOutBlock(spatial_dims=2, in_channels=fs, out_channels=num_classes)

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        z3, z6, z9, z12 = features
        enc1 = self.encoder1(image)
        x = self.decoder5(z12, self.encoder4(z9))
        x = self.decoder4(x, self.encoder3(z6))
        x = self.decoder3(x, self.encoder2(z3))
        return self.out(self.decoder2(x, enc1))


class EncoderUNet(nn.Module):
    """U-Net segmentation network around the bundle's image encoder (see the module doc)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 1,
        mode: str = "frozen",
        decoder_channels=DEFAULT_DECODER_CHANNELS,
        vit_feature_size: int = 16,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder, self.mode, self.num_classes = encoder, mode, num_classes
        self.frozen = mode == "frozen"
        if isinstance(encoder, ResNetImageEncoder):
            self.kind, self.stride = "resnet", 32
            self.decoder = _ResNetUNetDecoder(encoder, num_classes, decoder_channels)
        elif isinstance(encoder, ViTImageEncoder):
            self.kind, self.stride = "vit", 16
            self.decoder = _ViTUNETRDecoder(encoder, num_classes, vit_feature_size)
        else:
            raise TypeError(f"EncoderUNet needs a ResNetImageEncoder or ViTImageEncoder, got {type(encoder).__name__}")
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderUNet:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # batch norm keeps its pretrained running statistics
        return self

    def _check_size(self, image: torch.Tensor) -> None:
        h, w = image.shape[-2:]
        if self.kind == "vit":
            side = self.encoder.image_size
            if (h, w) != (side, side):
                raise ValueError(
                    f"the ViT encoder was built for {side}x{side} inputs (fixed position embedding), got {h}x{w}"
                )
        elif h % self.stride or w % self.stride:
            raise ValueError(
                f"input {h}x{w}: a ResNet U-Net needs sides that are multiples of {self.stride} "
                "(the preprocessing pads to them with DivisiblePadd)"
            )

    def encoder_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "resnet":
            return resnet_pyramid(self.encoder, image)
        tokens, hidden = self.encoder.backbone(_match_channels(image, self.encoder.in_channels))
        side = self.encoder.grid_size

        def grid(t: torch.Tensor) -> torch.Tensor:  # drop CLS, tokens (row-major) -> [B, F, side, side]
            return t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, side, side)

        return [grid(hidden[i]) for i in self.decoder.skip_indices] + [grid(tokens)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self._check_size(image)
        if self.frozen:
            with torch.no_grad():
                features = self.encoder_features(image)
        else:
            features = self.encoder_features(image)
        return self.decoder(image, features)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
