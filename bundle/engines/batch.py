"""Turning a collated pretraining batch into CM-CGNS model inputs.

A batch from the DataLoader holds the manifest keys (image, report, id) and the TokenizeReportd outputs. Rows whose
report reduced to nothing (num_sentences == 0) cannot enter the sentence-level losses: they are dropped here and
counted by the engines; a batch with no row left is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

TEXT_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "sentence_index")


def batch_ids(batch: Mapping) -> list:
    """The per-row ids of a batch (for error messages), or row numbers when the batch has none."""
    ids = batch.get("id")
    if ids is None:
        return list(range(len(batch["image"])))
    if isinstance(ids, torch.Tensor):
        return ids.tolist()
    return list(ids)


def drop_empty_reports(batch: Mapping) -> tuple[dict | None, list]:
    """Rows with num_sentences > 0, and the ids of the dropped rows.

    Returns (None, all ids) when no row is left. Tensors and per-row lists are indexed with one boolean mask.
    """
    if "num_sentences" not in batch:
        raise KeyError("batch has no 'num_sentences': the report must go through TokenizeReportd")
    num_sentences = torch.as_tensor(batch["num_sentences"]).reshape(-1)
    keep = num_sentences > 0
    ids = batch_ids(batch)
    if bool(keep.all()):
        return dict(batch), []
    dropped = [i for i, k in zip(ids, keep.tolist()) if not k]
    if not bool(keep.any()):
        return None, dropped
    size = keep.numel()
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            out[key] = value[keep]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            out[key] = [v for v, k in zip(value, keep.tolist()) if k]
        else:
            out[key] = value
    return out, dropped


def to_model_inputs(batch: Mapping, device: torch.device | str, non_blocking: bool = False) -> dict[str, torch.Tensor]:
    """image (float) and the four token tensors (long) on `device`, as plain tensors (no MONAI metadata)."""
    missing = [k for k in ("image", *TEXT_INPUT_KEYS) if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}: pretraining needs the image and the TokenizeReportd outputs")

    def plain(x):
        return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)

    inputs = {"image": plain(batch["image"]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)}
    for key in TEXT_INPUT_KEYS:
        inputs[key] = plain(batch[key]).to(device=device, dtype=torch.long, non_blocking=non_blocking)
    return inputs
