"""Load ImageNet weights saved in torchvision's ResNet format into a MONAI ResNet, from a local file only.

A MONAI ResNet built with `conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", bias_downsample=False` has
torchvision's architecture and parameter names (conv1, bn1, layerL.B.convN / bnN / downsample.{0,1}); the mapping
checks every name against that layout, drops the classifier (fc.*, not part of an encoder), strips DataParallel
prefixes, and for a 1-channel encoder sums conv1 over the RGB axis (a grey image repeated to RGB gives the same
first-layer output).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

_TORCHVISION_KEY = re.compile(
    r"^(conv1\.weight"
    r"|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|downsample\.0\.weight|downsample\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)))$"
)
_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


def torchvision_resnet_to_monai(state_dict: dict[str, torch.Tensor], n_input_channels: int) -> dict[str, torch.Tensor]:
    """Map a torchvision-format ResNet state dict to MONAI ResNet keys (see the module docstring)."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        name = key
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith("fc."):
            continue
        if not _TORCHVISION_KEY.match(name):
            unknown.append(key)
            continue
        mapped[name] = value
    if unknown:
        raise KeyError(f"not torchvision ResNet parameter names: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    if "conv1.weight" not in mapped:
        raise KeyError("no conv1.weight: not a torchvision ResNet state dict")
    conv1 = mapped["conv1.weight"]
    if conv1.shape[1] == 3 and n_input_channels == 1:
        mapped["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    elif conv1.shape[1] != n_input_channels:
        raise ValueError(f"conv1 has {conv1.shape[1]} input channels; cannot map it to {n_input_channels}")
    return mapped


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local checkpoint (tensors only) and unwrap a {"state_dict": ...} or {"model": ...} container."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(container), dict):
            loaded = loaded[container]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    return loaded


def state_dict_mismatch(mapped: dict, expected: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of a mapped state dict against a module's own."""
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong_shape = [k for k in expected if k in mapped and mapped[k].shape != expected[k].shape]
    return missing, unexpected, wrong_shape


def load_torchvision_resnet_weights(backbone: nn.Module, source: str | Path | dict, n_input_channels: int) -> None:
    """Load torchvision-format weights (a path or a state dict) into a MONAI ResNet; every trunk key must match."""
    state_dict = source if isinstance(source, dict) else read_state_dict(source)
    mapped = torchvision_resnet_to_monai(state_dict, n_input_channels)
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected, wrong_shape = state_dict_mismatch(mapped, expected)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"torchvision ResNet weights do not fit this MONAI ResNet: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]} (resnet18 vs resnet50?)"
        )
    backbone.load_state_dict(mapped, strict=False)
