"""Build the image encoder of a downstream task from one of three sources (method.md 5 baselines):

- "cmcgns":   a CM-CGNS checkpoint: the exported models/image_encoder.pt (keys "backbone.*", "attention_pool.*") or a
              whole pretraining model.pt (keys "image_encoder.*" among the model's others; the prefix is stripped and
              the rest ignored). Every encoder key must be present with its shape: a wrong architecture fails loudly.
- "imagenet": a local torchvision-format ResNet state dict (bundle.networks.torchvision_resnet_weights; never
              downloaded). The attention pool stays randomly initialised (the default linear probe does not use it).
- "random":   random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bundle.networks.image_encoders import build_image_encoder
from bundle.networks.torchvision_resnet_weights import read_state_dict

ENCODER_SOURCES = ("cmcgns", "imagenet", "random")
PRETRAIN_PREFIX = "image_encoder."


def cmcgns_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The image-encoder state dict held by `path` (image_encoder.pt, or model.pt with the prefix stripped)."""
    state = read_state_dict(path)
    if any(k.startswith(PRETRAIN_PREFIX) for k in state):
        state = {k[len(PRETRAIN_PREFIX) :]: v for k, v in state.items() if k.startswith(PRETRAIN_PREFIX)}
    return state


def load_cmcgns_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    state = cmcgns_encoder_state(path)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not an image encoder of this architecture: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]} (check encoder_name / image size / in_channels)"
        )
    encoder.load_state_dict(state)


def build_downstream_encoder(
    source: str = "cmcgns",
    weights: str | Path | None = None,
    name: str = "resnet50",
    in_channels: int = 1,
    image_size: int = 224,
    **encoder_kwargs,
) -> nn.Module:
    """The bundle's image encoder (bundle.networks.image_encoders) initialised from `source` (see module doc)."""
    if source not in ENCODER_SOURCES:
        raise ValueError(f"unknown encoder source {source!r}; choose one of {ENCODER_SOURCES}")
    if source != "random" and not weights:
        raise ValueError(f"encoder source {source!r} needs a weights file")
    if source != "random" and not Path(weights).is_file():
        raise FileNotFoundError(f"encoder weights ({source}) not found: {weights}")
    pretrained = weights if source == "imagenet" else None
    encoder = build_image_encoder(name, in_channels, image_size, pretrained_weights=pretrained, **encoder_kwargs)
    if source == "cmcgns":
        load_cmcgns_encoder_weights(encoder, weights)
    return encoder


def parse_encoder(spec: str) -> tuple[str, str, str | None]:
    """A grid runner's `--encoder label=source[:weights]` -> (label, source, weights); "random" alone is allowed."""
    if "=" not in spec:
        spec = f"{spec}={spec}"
    label, rest = spec.split("=", 1)
    source, _, weights = rest.partition(":")
    if source not in ENCODER_SOURCES:
        raise SystemExit(f"--encoder {spec!r}: source must be cmcgns, imagenet or random")
    if source != "random" and not weights:
        raise SystemExit(f"--encoder {spec!r}: source {source} needs a weights file (label={source}:FILE)")
    return label, source, weights or None
