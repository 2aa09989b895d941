"""Segmentation Dice for the transfer protocol (method.md 5). Three numbers, named so nobody mixes them up:

- `<prefix>_mgca_dice` (key metric, MGCA's, what the paper tables report): per image, threshold 0.5; an image whose
  ground truth is empty scores 1 if the prediction is empty too, else 0; the mean over the images of each BATCH,
  then the mean of those batch means (each batch weighs the same, the last, smaller one included), as MGCA's
  `get_dice` and epoch-end averaging (mgca/models/ssl_segmenter.py). It depends on the batch size.
- `<prefix>_mean_dice`: the same per-image Dice averaged over IMAGES, with MONAI's DiceMetric
  (`ignore_empty=False` gives exactly the empty-mask convention above).
- `<prefix>_pooled_dice`: one Dice over all pixels of the split, 2 TP / (2 TP + FP + FN), with MONAI's
  ConfusionMatrixMetric ("f1 score", confusion matrices summed before the metric; MONAI's DiceMetric reduces per image
  and cannot pool). With several channels it is pooled over the channels too.
With several channels (per-class masks), the per-image Dice is the mean over channels of each image.
All three are computed on the decollated engine output (`pred` thresholded to {0, 1}, `label` in {0, 1}) and gather
every rank's values under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.metrics import Metric
from monai.handlers import ConfusionMatrix, IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric
from monai.utils import evenly_divisible_all_gather


def _as_batch(values) -> torch.Tensor:
    """A batch tensor [B, C, ...] or a list of per-image tensors [C, ...] (decollated output) -> float [B, C, N]."""
    if not isinstance(values, torch.Tensor):
        values = torch.stack([torch.as_tensor(v) for v in values])
    values = values.detach().float().cpu()
    if values.ndim < 3:
        raise ValueError(f"expected [B, C, H, W] masks, got shape {tuple(values.shape)}")
    return values.reshape(values.shape[0], values.shape[1], -1)


def mgca_dice_per_image(probability, truth, threshold: float = 0.5) -> torch.Tensor:
    """[B] Dice of each image at `threshold` (empty truth: 1 if the prediction is empty, else 0), channel mean."""
    p = (_as_batch(probability) > threshold).float()
    t = (_as_batch(truth) > 0.5).float()
    if p.shape != t.shape:
        raise ValueError(f"predictions {tuple(p.shape)} and masks {tuple(t.shape)} differ in shape")
    t_sum, p_sum = t.sum(-1), p.sum(-1)
    positive = 2 * (p * t).sum(-1) / (p_sum + t_sum).clamp_min(1e-12)
    dice = torch.where(t_sum > 0, positive, (p_sum == 0).float())
    return dice.mean(dim=1)


def mgca_batch_dice(probability, truth, threshold: float = 0.5) -> float:
    """MGCA's get_dice: the mean per-image Dice of one batch."""
    return float(mgca_dice_per_image(probability, truth, threshold).mean())


def pooled_dice(prediction, truth, threshold: float = 0.5) -> float:
    """Dice over all pixels of all images: 2 TP / (2 TP + FP + FN); NaN when both are empty everywhere."""
    p = (_as_batch(prediction) > threshold).float()
    t = (_as_batch(truth) > 0.5).float()
    tp, denominator = (p * t).sum(), p.sum() + t.sum()
    return float(2 * tp / denominator) if denominator > 0 else float("nan")


class MGCABatchDice(Metric):
    """Ignite metric: MGCA's Dice, averaged per batch then over batches (all ranks' batches)."""

    def __init__(self, threshold: float = 0.5, output_transform=lambda x: x, device="cpu"):
        self.threshold = threshold
        self._batch_means: list[float] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._batch_means = []

    def update(self, output) -> None:
        y_pred, y = output
        self._batch_means.append(mgca_batch_dice(y_pred, y, self.threshold))

    @torch.no_grad()
    def iteration_completed(self, engine) -> None:
        # ignite's default splits a decollated list into one update per image; MGCA's mean needs the whole batch
        self.update(self._output_transform(engine.state.output))

    def compute(self) -> float:
        if not self._batch_means:
            raise RuntimeError("MGCABatchDice: no batches were evaluated this epoch")
        means = evenly_divisible_all_gather(torch.tensor(self._batch_means, dtype=torch.float64), concat=True)
        return float(means.mean())


def segmentation_metrics(prefix: str) -> tuple[dict, dict]:
    """(key metric, additional metrics) for a SupervisedEvaluator: MGCA Dice; mean and pooled Dice (MONAI)."""
    transform = from_engine(["pred", "label"])
    key = {f"{prefix}_mgca_dice": MGCABatchDice(output_transform=transform)}
    extra = {
        f"{prefix}_mean_dice": IgniteMetricHandler(
            metric_fn=DiceMetric(include_background=True, reduction="mean", ignore_empty=False),
            output_transform=transform,
            save_details=True,
        ),
        f"{prefix}_pooled_dice": ConfusionMatrix(
            include_background=True,
            metric_name="f1 score",
            compute_sample=False,
            reduction="sum",
            output_transform=transform,
            save_details=False,
        ),
    }
    return key, extra


def metric_names(prefix: str) -> Sequence[str]:
    return [f"{prefix}_mgca_dice", f"{prefix}_mean_dice", f"{prefix}_pooled_dice"]
