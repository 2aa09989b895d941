"""Load ImageNet ViT weights in timm / DeiT format into the bundle's MONAI ViT, from a local file only.

The paper and MGCA initialise ViT-B/16 from ImageNet (DeiT-base / timm `vit_base_patch16_224`). Key mapping, every
key checked (nothing missing, nothing left over, every shape equal):

    timm / DeiT                         MONAI ViT (bundle/networks/image_encoders.py ViTImageEncoder.backbone)
    patch_embed.proj.{weight,bias}      patch_embedding.patch_embeddings.{weight,bias}
    pos_embed [1, 1 + N, F]             patch_embedding.position_embeddings [1, N, F]  (the patch part)
    cls_token + pos_embed[:, :1]        cls_token  (MONAI adds no position to the CLS token; timm adds pos_embed[0]
                                        to it, so folding it in gives the same sequence)
    blocks.i.norm{1,2}                  blocks.i.norm{1,2}
    blocks.i.attn.qkv                   blocks.i.attn.qkv  (same (q, k, v) x heads x dim layout)
    blocks.i.attn.proj                  blocks.i.attn.out_proj
    blocks.i.mlp.fc{1,2}                blocks.i.mlp.linear{1,2}
    norm                                norm
    head.*, head_dist.*, fc_norm.*      dropped (classifier, not part of an encoder)

A one-channel encoder gets the patch projection summed over RGB (a grey image repeated to RGB gives the same
embedding); a patch grid other than the checkpoint's gets the positional embedding interpolated bicubically, as timm
does. Distilled DeiT checkpoints (a `dist_token`) are refused: their sequence has two class tokens. One numerical
difference remains: timm's LayerNorm eps is 1e-6, MONAI's 1e-5.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bundle.networks.torchvision_resnet_weights import read_state_dict, state_dict_mismatch

_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "visual.")
_DROPPED = ("head.", "head_dist.", "fc_norm.", "pre_logits.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_BLOCK_NAMES = {"attn.proj": "attn.out_proj", "mlp.fc1": "mlp.linear1", "mlp.fc2": "mlp.linear2"}


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def resize_position_embedding(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, N, F] positional embedding of a square patch grid -> [1, grid * grid, F] (bicubic)."""
    old = math.isqrt(patch_pos.shape[1])
    if old * old != patch_pos.shape[1]:
        raise ValueError(f"positional embedding of {patch_pos.shape[1]} patches is not a square grid")
    if old == grid:
        return patch_pos
    width = patch_pos.shape[-1]
    image = patch_pos.reshape(1, old, old, width).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, width).to(patch_pos.dtype)


def timm_vit_to_monai(state_dict: dict[str, torch.Tensor], in_channels: int, grid: int) -> dict[str, torch.Tensor]:
    """Map a timm / DeiT ViT state dict to MONAI ViT keys (see the module doc)."""
    sd = {_strip(k): v for k, v in state_dict.items()}
    if "dist_token" in sd:
        raise ValueError("a distilled DeiT checkpoint (dist_token): use the non-distilled DeiT / timm ViT weights")
    for required in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if required not in sd:
            raise KeyError(f"no {required}: not a timm / DeiT ViT state dict")
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key.startswith(_DROPPED) or key in ("cls_token", "pos_embed"):
            continue
        if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            mapped["patch_embedding.patch_embeddings." + key.rsplit(".", 1)[1]] = value
        elif key in ("norm.weight", "norm.bias"):
            mapped[key] = value
        elif match := _BLOCK.match(key):
            index, name, kind = match.groups()
            mapped[f"blocks.{index}.{_BLOCK_NAMES.get(name, name)}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"not timm ViT parameter names: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    pos = sd["pos_embed"]
    mapped["cls_token"] = sd["cls_token"] + pos[:, :1]
    mapped["patch_embedding.position_embeddings"] = resize_position_embedding(pos[:, 1:], grid)
    proj = mapped["patch_embedding.patch_embeddings.weight"]
    if proj.shape[1] == 3 and in_channels == 1:
        mapped["patch_embedding.patch_embeddings.weight"] = proj.sum(dim=1, keepdim=True)
    elif proj.shape[1] != in_channels:
        raise ValueError(f"the patch projection has {proj.shape[1]} input channels; cannot map it to {in_channels}")
    return mapped


def load_timm_vit_weights(backbone: nn.Module, source: str | Path | dict, in_channels: int, grid: int) -> None:
    """Load timm / DeiT weights (a path or a state dict) into the MONAI ViT `backbone`; every key must match."""
    state_dict = source if isinstance(source, dict) else read_state_dict(source)
    mapped = timm_vit_to_monai(state_dict, in_channels, grid)
    expected = backbone.state_dict()
    missing, unexpected, wrong_shape = state_dict_mismatch(mapped, expected)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"timm ViT weights do not fit this MONAI ViT: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(mapped[k].shape), tuple(expected[k].shape)) for k in wrong_shape[:3]]} "
            "(another width, depth or patch size?)"
        )
    backbone.load_state_dict(mapped, strict=True)
