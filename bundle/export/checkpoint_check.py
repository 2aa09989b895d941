"""Refuse to export a checkpoint that does not fit the exported network: the message names what differs.

A training checkpoint is `{"model": state_dict, ...}` (MONAI CheckpointSaver; classification adds
"downstream_meta" with its task and class names) or a bare state dict. Exporting one into a bundle whose network
was built with other hyper-parameters (encoder, decoder widths, number of classes) would give a bundle that loads
with strict=False in MONAI Label and silently predicts garbage, so every key and shape is compared here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

MAX_SHOWN = 8


class ExportMismatchError(ValueError):
    """The checkpoint's architecture or classes differ from the task config being exported."""


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, downstream meta or {}) of a training checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ExportMismatchError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, expected a dict)")
    state = checkpoint.get("model", checkpoint)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportMismatchError(f"{path}: its 'model' entry is not a state dict of tensors")
    return dict(state), dict(checkpoint.get("downstream_meta", {}) or {})


def _shown(keys: Sequence[str]) -> str:
    return ", ".join(keys[:MAX_SHOWN]) + (f" ... ({len(keys)} in all)" if len(keys) > MAX_SHOWN else "")


def check_state_dict(
    network: nn.Module, state: Mapping[str, torch.Tensor], path: str, task: str, labels: Sequence[str]
) -> None:
    """Every key of the network present in `state` with its shape, and nothing else."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape (checkpoint vs config) differs for {_shown(wrong)}")
        if missing:
            parts.append(f"missing keys {_shown(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_shown(unexpected)}")
        raise ExportMismatchError(
            f"{path} does not match the {task} network of the export settings: "
            + "; ".join(parts)
            + f" (the export builds {len(labels)} class(es) {list(labels)}; check --labels, --encoder_name, "
            "--encoder_image_size, --decoder_channels / --fpn_channels)"
        )


def check_classes(saved: Sequence[str] | None, wanted: Sequence[str], path: str) -> None:
    """The checkpoint's stored class names (classification) equal the export's, in order."""
    if saved is None:
        return
    saved, wanted = list(saved), list(wanted)
    if saved != wanted:
        extra = [c for c in saved if c not in wanted]
        absent = [c for c in wanted if c not in saved]
        detail = f"not in the export: {extra}; not in the checkpoint: {absent}" if extra or absent else "another order"
        raise ExportMismatchError(f"{path} was trained with classes {saved}, the export names {wanted} ({detail})")


def check_task(saved: str | None, wanted: str, path: str) -> None:
    if saved is not None and saved != wanted:
        raise ExportMismatchError(f"{path} was trained for the {saved!r} task, the export is {wanted!r}")
