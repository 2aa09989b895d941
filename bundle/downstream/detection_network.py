"""RetinaNet over the pretrained image encoder (method.md 5 detection; MONAI's RetinaNet replaces the published YOLOv3
head, a documented deviation).

The network is MONAI's `monai.apps.detection.networks.retinanet_network.RetinaNet` whose feature extractor is
`EncoderFPN`: MONAI's `FeaturePyramidNetwork` over three feature maps of the bundle's image encoder:
- ResNet: layer2, layer3 and layer4 (strides 8, 16, 32);
- ViT: its one patch-token map (stride = patch size, 16) turned into strides 8 / 16 / 32 by a simple multi-scale
  adapter (ViTDet's "simple feature pyramid": a 2x transposed convolution, identity, a 2x max pool).
No extra P6/P7 level: the stride-32 level's anchors already reach 200 px at 224 px input.

mode "frozen" (the protocol) keeps the encoder in eval mode under torch.no_grad (its batch-norm statistics never
move); "fine_tune" trains it too. Boxes follow MONAI's convention: coordinate k runs along image axis k, i.e.
[row1, col1, row2, col2] for a [C, H, W] image (bundle/downstream/detection_data.py converts from the manifests' x =
column convention).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from torch import nn

from bundle.networks.image_encoders import ResNetImageEncoder, ViTImageEncoder, _match_channels

MODES = ("frozen", "fine_tune")
RESNET_LEVELS = ("layer2", "layer3", "layer4")
LEVEL_STRIDES = (8, 16, 32)


class EncoderFeatures(nn.Module):
    """The encoder's three feature maps as an OrderedDict {"layer2", "layer3", "layer4"} (strides 8 / 16 / 32).

    Replaces torchvision's IntermediateLayerGetter (used by MONAI's BackboneWithFPN), which needs torchvision: the
    bundle's encoders expose their layers directly, so the three maps are read off the forward pass here.
    """

    def __init__(self, encoder: nn.Module, mode: str = "frozen"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown detection encoder mode {mode!r}; choose one of {MODES}")
        self.encoder, self.mode, self.frozen = encoder, mode, mode == "frozen"
        if isinstance(encoder, ResNetImageEncoder):
            net = encoder.backbone
            self.in_channels_list = [_block_out(getattr(net, name)) for name in RESNET_LEVELS]
            self.adapter = None
        elif isinstance(encoder, ViTImageEncoder):
            width = encoder.feature_dim
            self.in_channels_list = [width // 2, width, width]
            self.adapter = nn.ModuleDict(
                {
                    "layer2": nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2),
                    "layer4": nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
                }
            )
        else:
            raise TypeError(f"detection needs a bundle ResNet or ViT image encoder, got {type(encoder).__name__}")
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderFeatures:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # batch norm keeps its pretrained running statistics
        return self

    def _maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        if self.adapter is None:
            net = self.encoder.backbone
            x = net.maxpool(net.act(net.bn1(net.conv1(_match_channels(image, self.encoder.in_channels)))))
            c2 = net.layer2(net.layer1(x))
            c3 = net.layer3(c2)
            return [c2, c3, net.layer4(c3)]
        return [self.encoder.forward_features(image)]

    def forward(self, image: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.frozen:
            with torch.no_grad():
                maps = self._maps(image)
        else:
            maps = self._maps(image)
        if self.adapter is not None:  # trainable even when the ViT is frozen
            tokens = maps[0]
            maps = [self.adapter["layer2"](tokens), tokens, self.adapter["layer4"](tokens)]
        return OrderedDict(zip(RESNET_LEVELS, maps))


def _block_out(layer: nn.Sequential) -> int:
    """Output channels of a MONAI ResNet layer (basic block: conv2; bottleneck: conv3)."""
    block = layer[-1]
    last = getattr(block, "conv3", None) or block.conv2
    return last.out_channels


class EncoderFPN(nn.Module):
    """Encoder feature maps -> MONAI FeaturePyramidNetwork, an OrderedDict of `out_channels`-wide maps.

    Replaces MONAI's BackboneWithFPN / resnet_fpn_feature_extractor, which need torchvision (IntermediateLayerGetter,
    _validate_trainable_layers); the FPN itself is MONAI's, unchanged.
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 256, mode: str = "frozen"):
        super().__init__()
        self.body = EncoderFeatures(encoder, mode)
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=2, in_channels_list=self.body.in_channels_list, out_channels=out_channels, extra_blocks=None
        )
        self.out_channels = out_channels  # RetinaNet reads this attribute

    def forward(self, image: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(image))


def default_anchor_sizes(base: float = 2.0) -> list[list[int]]:
    """Per level (stride 8 / 16 / 32): base * stride * (1, 2^(1/3), 2^(2/3)), RetinaNet's three scales per octave."""
    return [[int(round(base * s * 2 ** (k / 3))) for k in range(3)] for s in LEVEL_STRIDES]


def build_anchor_generator(
    sizes: list[list[int]] | None = None, aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
) -> AnchorGenerator:
    """MONAI's 2D AnchorGenerator: len(sizes[i]) * len(aspect_ratios) anchors per location of level i."""
    sizes = sizes or default_anchor_sizes()
    if len(sizes) != len(LEVEL_STRIDES):
        raise ValueError(f"anchor sizes need one list per level (strides {LEVEL_STRIDES}), got {len(sizes)}")
    return AnchorGenerator(sizes=[tuple(s) for s in sizes], aspect_ratios=[tuple(aspect_ratios)] * len(sizes))


class EncoderRetinaNet(RetinaNet):
    """MONAI's RetinaNet with the EncoderFPN feature extractor; `trainable_parameters()` for the optimiser."""

    def __init__(
        self, encoder: nn.Module, num_classes: int, num_anchors: int = 9, mode: str = "frozen", fpn_channels: int = 256
    ):
        super().__init__(
            spatial_dims=2,
            num_classes=num_classes,
            num_anchors=num_anchors,
            feature_extractor=EncoderFPN(encoder, fpn_channels, mode),
            size_divisible=max(LEVEL_STRIDES),
        )
        self.mode = mode

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class DetectionHeadOutputs(nn.Module):
    """The RetinaNet's raw head outputs as one tensor [B, num_classes + 4, N] (per anchor: class logits, then box
    deltas), N anchors in the detector's order (levels, then row, column, anchor: MONAI's `_reshape_maps`).

    Why: the detector's anchor matching, decoding and NMS are Python over variable-size box lists, which neither
    TorchScript tracing nor ONNX captures; this is the part of detection that exports (model.ts / model.onnx), and
    the single-tensor network verify_net_in_out can check. Decoding stays with the bundle's `detector`.
    """

    def __init__(self, network: RetinaNet):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        heads = self.network(image)
        net = self.network
        levels = []
        for cls, box in zip(heads[net.cls_key], heads[net.box_reg_key]):
            b = cls.shape[0]
            cls = cls.permute(0, 2, 3, 1).reshape(b, -1, net.num_classes)
            box = box.permute(0, 2, 3, 1).reshape(b, -1, 2 * net.spatial_dims)
            levels.append(torch.cat([cls, box], dim=2))
        return torch.cat(levels, dim=1).transpose(1, 2)
