"""Linear probe on cached features: the encoder is frozen, so its pooled features are computed once per split and the
linear head is trained on them (the same head, loss, optimiser and early stopping as configs/classification.yaml,
minus the training-time random crop: cached features come from the evaluation transform). Used by
scripts/evaluate_transfer.py to run the encoders x fractions x seeds grid quickly; the result tables say so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.data import DataLoader, Dataset

from bundle.downstream.classifier import EncoderClassifier
from bundle.downstream.metrics import auroc_per_class, multiclass_accuracy
from bundle.downstream.tasks import classification_loss

logger = logging.getLogger(__name__)


@dataclass
class CachedFeatures:
    ids: list[str]
    features: torch.Tensor  # [N, F] pooled encoder features
    labels: torch.Tensor  # [N, C] float (multilabel / binary) or [N] long (multiclass)


class ReusedPreprocessing:
    """The evaluation preprocessing of each image run once and its output reused: scripts/ablate.py probes many
    encoders on the same images with the same deterministic transform, and decoding + resizing was about 40 % of
    each probe's feature pass. The caller owns `cache` and keeps one per transform setting (keys are the items'
    image paths); only in this process (a DataLoader worker's copy would be lost)."""

    def __init__(self, transform, cache: dict):
        self.transform, self.cache = transform, cache

    def __call__(self, item: dict) -> dict:
        key = str(item["image"])
        if key not in self.cache:
            self.cache[key] = self.transform(dict(item))
        return self.cache[key]


@torch.no_grad()
def extract_features(
    model: EncoderClassifier,
    items: Sequence[dict],
    transform,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
    preprocessed: dict | None = None,
) -> CachedFeatures:
    """Pooled features of `items` (manifest items) through `transform` (the evaluation preprocessing).

    preprocessed: a dict kept by the caller across calls with the same transform: each image is then decoded and
    transformed once (ReusedPreprocessing); needs num_workers 0.
    """
    if preprocessed is not None:
        if num_workers:
            raise ValueError("a reused preprocessing cache fills in this process: use num_workers 0")
        transform = ReusedPreprocessing(transform, preprocessed)
    model.eval().to(device)
    loader = DataLoader(Dataset(list(items), transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    ids, feats, labels, done, start = [], [], [], 0, time.perf_counter()
    for batch in loader:
        feats.append(model.features(batch["image"].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]))
        ids.extend(str(i) for i in batch["id"])
        done += len(batch["id"])
        rate = done / max(time.perf_counter() - start, 1e-9)
        logger.info(
            "%s: %d/%d images (%.1f img/s, ETA %.0f s)", desc, done, len(items), rate, (len(items) - done) / rate
        )
    return CachedFeatures(ids, torch.cat(feats), torch.cat(labels))


def evaluate_head(
    head: torch.nn.Module, data: CachedFeatures, task: str, num_classes: int, class_names: Sequence[str]
) -> dict:
    """Test/validation metrics of a linear head on cached features (probabilities as in the config's postprocessing)."""
    with torch.no_grad():
        logits = head(data.features)
    if task == "multiclass":
        probs = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(data.labels.long(), num_classes).float()
        auroc = auroc_per_class(probs, onehot, class_names)
        return {
            "accuracy": multiclass_accuracy(probs, onehot),
            "auroc": auroc.macro,
            "undefined": auroc.undefined,
            "per_class": auroc.per_class,
            "probs": probs,
        }
    probs = logits.sigmoid()
    auroc = auroc_per_class(probs, data.labels, class_names)
    return {"auroc": auroc.macro, "undefined": auroc.undefined, "per_class": auroc.per_class, "probs": probs}


def train_linear_head(
    train: CachedFeatures,
    val: CachedFeatures,
    task: str,
    num_classes: int,
    class_names: Sequence[str],
    seed: int,
    learning_rate: float = 5e-4,
    weight_decay: float = 1e-6,
    batch_size: int = 32,
    max_epochs: int = 50,
    patience: int = 10,
) -> tuple[torch.nn.Linear, dict]:
    """AdamW on the cached features, best head by the validation key metric, early stopping after `patience`."""
    key = "accuracy" if task == "multiclass" else "auroc"
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(train.features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = classification_loss(task)
    best_state, best_value, best_epoch, since = None, -float("inf"), 0, 0
    n = len(train.ids)
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = loss_fn(head(train.features[index]), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        value = evaluate_head(head, val, task, num_classes, class_names)[key]
        if value > best_value:  # NaN (no defined class) never counts as an improvement
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
            best_value, best_epoch, since = value, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    return head, {"best_val": best_value, "best_epoch": best_epoch, "epochs_run": epoch}
