"""What differs between the classification task types of the transfer protocol (method.md 5):

- "multilabel" (CheXpert 5 tasks, the demo's classes): label = multi-hot float list [C]; BCE on logits; sigmoid;
  key metric macro AUROC (+ per-class AUROC).
- "binary" (RSNA pneumonia): label = [0.0] or [1.0] (C = 1); as multilabel; key metric AUROC.
- "multiclass" (COVIDx): label = class index; cross-entropy; softmax; key metric accuracy, also macro AUROC
  (one-vs-rest on the one-hot label).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import Activationsd, AsDiscreted, Compose, MapTransform

from bundle.downstream.metrics import MacroAUROC, MultiClassAccuracy

TASKS = ("multilabel", "binary", "multiclass")


def check_task(task: str, num_classes: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown classification task {task!r}; choose one of {TASKS}")
    if task == "binary" and num_classes != 1:
        raise ValueError(f"a binary task has one output (num_classes=1), got num_classes={num_classes}")
    if task == "multiclass" and num_classes < 2:
        raise ValueError(f"a multiclass task needs num_classes >= 2, got {num_classes}")


class ClassificationLabeld(MapTransform):
    """Manifest label -> tensor: float [C] (multilabel / binary) or a long class index (multiclass)."""

    def __init__(self, task: str, num_classes: int, keys="label") -> None:
        super().__init__(keys)
        check_task(task, num_classes)
        self.task, self.num_classes = task, num_classes

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            where = f"item {d.get('id', '?')}: {key} {value!r}"
            if self.task == "multiclass":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or int(value) != value
                    or not 0 <= int(value) < self.num_classes
                ):
                    raise ValueError(f"{where} is not a class index in [0, {self.num_classes})")
                d[key] = torch.tensor(int(value), dtype=torch.long)
            else:
                values = list(value) if isinstance(value, (list, tuple)) else [value]
                if len(values) != self.num_classes:
                    raise ValueError(f"{where} has {len(values)} entries, expected num_classes={self.num_classes}")
                d[key] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        return d


def classification_loss(task: str) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss() if task == "multiclass" else torch.nn.BCEWithLogitsLoss()


def classification_postprocessing(task: str, num_classes: int) -> Compose:
    """Per-item (decollated) pred -> probabilities, label -> one-hot / multi-hot [C] (what the metrics take)."""
    check_task(task, num_classes)
    if task == "multiclass":
        return Compose([Activationsd(keys="pred", softmax=True), AsDiscreted(keys="label", to_onehot=num_classes)])
    return Compose([Activationsd(keys="pred", sigmoid=True)])


def key_metric_name(task: str, prefix: str) -> str:
    return f"{prefix}_accuracy" if task == "multiclass" else f"{prefix}_auroc"


def classification_metrics(task: str, class_names: Sequence[str], prefix: str) -> tuple[dict, dict]:
    """(key metric, additional metrics) for a SupervisedEvaluator, names prefixed "val" / "test"."""
    from monai.handlers import from_engine

    transform = from_engine(["pred", "label"])
    auroc = MacroAUROC(class_names=class_names, output_transform=transform)
    if task == "multiclass":
        return {key_metric_name(task, prefix): MultiClassAccuracy(output_transform=transform)}, {
            f"{prefix}_auroc": auroc
        }
    return {key_metric_name(task, prefix): auroc}, {}


def class_names_for(task: str, num_classes: int, manifest_names: Sequence[str] | None) -> list[str]:
    """The manifest's class names when they fit the outputs, else "class_<i>"."""
    names = list(manifest_names or [])
    if len(names) == num_classes:
        return names
    return [f"class_{i}" for i in range(num_classes)]
