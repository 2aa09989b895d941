"""Classification metrics for the transfer protocol (method.md 5): per-class and macro AUROC, multi-class accuracy.

Convention: predictions are probabilities [N, C] (sigmoid for multi-label / binary, softmax for multi-class) and labels
are multi-hot or one-hot [N, C]. A class whose evaluated labels are all negative (or all positive) has no AUROC; it is
listed as undefined and left out of the macro average, never averaged in as NaN (MONAI's ROCAUCMetric(average="macro")
returns NaN in that case).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from ignite.metrics import Metric
from monai.metrics import compute_roc_auc
from monai.utils import evenly_divisible_all_gather

logger = logging.getLogger(__name__)


@dataclass
class AUROCResult:
    per_class: dict[str, float]  # defined classes only
    undefined: dict[str, str] = field(default_factory=dict)  # class -> why ("no positive" / "no negative")
    macro: float = float("nan")  # mean over per_class; NaN only when no class is defined


def _as_matrix(values: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A batch tensor, or a list of per-sample tensors (decollated engine output), as float [N, C]."""
    if not isinstance(values, torch.Tensor):
        values = torch.stack([torch.as_tensor(v) for v in values])
    values = values.detach().float().cpu()
    return values.reshape(values.shape[0], -1)


def auroc_per_class(y_pred, y, class_names: Sequence[str] | None = None) -> AUROCResult:
    """Per-class AUROC (MONAI's compute_roc_auc on each column) and their macro mean over the defined classes."""
    pred, label = _as_matrix(y_pred), _as_matrix(y)
    if pred.shape != label.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(label.shape)} differ in shape")
    names = list(class_names) if class_names is not None else [str(i) for i in range(pred.shape[1])]
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} class names for {pred.shape[1]} prediction columns")
    result = AUROCResult(per_class={})
    for c, name in enumerate(names):  # a loop over classes, not samples
        positives = int((label[:, c] > 0.5).sum())
        if positives == 0 or positives == label.shape[0]:
            result.undefined[name] = "no positive" if positives == 0 else "no negative"
            continue
        result.per_class[name] = float(compute_roc_auc(pred[:, c], label[:, c]))
    if result.per_class:
        result.macro = sum(result.per_class.values()) / len(result.per_class)
    return result


def multiclass_accuracy(y_pred, y) -> float:
    """Fraction of samples whose arg-max prediction is the arg-max of the one-hot label."""
    pred, label = _as_matrix(y_pred), _as_matrix(y)
    if pred.shape != label.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(label.shape)} differ in shape")
    return float((pred.argmax(1) == label.argmax(1)).float().mean())


class _Cumulative(Metric):
    """Collects (pred, label) over an epoch, gathered across ranks (padding-free, like MONAI's cumulative metrics)."""

    def __init__(self, output_transform=lambda x: x, device="cpu"):
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._preds, self._labels = [], []

    def update(self, output) -> None:
        y_pred, y = output
        self._preds.append(_as_matrix(y_pred))
        self._labels.append(_as_matrix(y))

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._preds:
            raise RuntimeError(f"{type(self).__name__}: no predictions were collected this epoch")
        pred, label = torch.cat(self._preds), torch.cat(self._labels)
        return evenly_divisible_all_gather(pred, concat=True), evenly_divisible_all_gather(label, concat=True)


class MacroAUROC(_Cumulative):
    """Macro AUROC over the classes with both positives and negatives; on completion also writes
    `<name>/<class>` per defined class and `<name>_num_undefined` into engine.state.metrics (so MetricsSaver
    saves them) and logs the undefined classes by name."""

    def __init__(self, class_names: Sequence[str] | None = None, output_transform=lambda x: x, device="cpu"):
        self.class_names = list(class_names) if class_names is not None else None
        self.last_result: AUROCResult | None = None
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float:
        self.last_result = auroc_per_class(*self._gathered(), class_names=self.class_names)
        return self.last_result.macro

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        result = self.last_result
        for cls, value in result.per_class.items():
            engine.state.metrics[f"{name}/{cls}"] = value
        engine.state.metrics[f"{name}_num_undefined"] = len(result.undefined)
        if result.undefined:
            logger.warning(
                "%s: AUROC undefined for %d class(es), left out of the macro: %s",
                name,
                len(result.undefined),
                ", ".join(f"{c} ({why})" for c, why in result.undefined.items()),
            )


class MultiClassAccuracy(_Cumulative):
    """Arg-max accuracy of softmax predictions against one-hot labels."""

    def compute(self) -> float:
        return multiclass_accuracy(*self._gathered())
