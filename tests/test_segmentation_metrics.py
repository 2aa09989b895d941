"""Segmentation Dice definitions and the MGCA loss against hand-computed values (empty masks included)."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from bundle.downstream.segmentation_loss import MGCASegmentationLoss
from bundle.downstream.segmentation_metrics import (
    mgca_batch_dice,
    mgca_dice_per_image,
    pooled_dice,
    segmentation_metrics,
)


def masks(*rows_of_pixels):
    """Each argument: a flat list of 0/1 pixels of one 2x2 image -> [B, 1, 2, 2]."""
    return torch.tensor(rows_of_pixels, dtype=torch.float32).reshape(len(rows_of_pixels), 1, 2, 2)


# four images: overlap 1 of (2 predicted, 1 true); perfect; empty truth + empty prediction; empty truth + 1 predicted
PRED = masks([1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1])
TRUTH = masks([1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0])
# per image: 2*1/(2+1) = 2/3, 1, 1 (both empty), 0 (empty truth, something predicted)
PER_IMAGE = [2 / 3, 1.0, 1.0, 0.0]


def test_per_image_dice_and_empty_masks():
    assert mgca_dice_per_image(PRED, TRUTH).tolist() == pytest.approx(PER_IMAGE)


def test_threshold_is_strictly_above_half_on_probabilities():
    prob = masks([0.5, 0.51, 0.2, 0.9])
    truth = masks([1, 1, 0, 0])
    # kept: 0.51, 0.9 -> prediction {1, 3}; truth {0, 1}; overlap 1 -> 2/4
    assert mgca_dice_per_image(prob, truth).tolist() == pytest.approx([0.5])


def test_mgca_batch_mean_then_mean_over_batches_differs_from_image_mean():
    # batches of 3 and 1 images: (2/3 + 1 + 1) / 3 = 8/9 and 0 -> MGCA: (8/9 + 0) / 2 = 4/9; image mean: 8/3 / 4 = 2/3
    assert mgca_batch_dice(PRED[:3], TRUTH[:3]) == pytest.approx(8 / 9)
    assert mgca_batch_dice(PRED[3:], TRUTH[3:]) == pytest.approx(0.0)
    assert sum(PER_IMAGE) / 4 == pytest.approx(2 / 3)


def test_pooled_dice_over_all_pixels():
    # TP = 1 + 2 = 3; predicted 2 + 2 + 0 + 1 = 5; true 1 + 2 = 3 -> 6 / 8
    assert pooled_dice(PRED, TRUTH) == pytest.approx(0.75)
    assert math.isnan(pooled_dice(masks([0, 0, 0, 0]), masks([0, 0, 0, 0])))


def test_two_channels_average_per_image():
    pred = torch.stack([PRED[0, 0], PRED[3, 0]])[None]  # one image, channel 0: 2/3, channel 1: 0
    truth = torch.stack([TRUTH[0, 0], TRUTH[3, 0]])[None]
    assert mgca_dice_per_image(pred, truth).tolist() == pytest.approx([1 / 3])


def test_engine_metrics_give_the_three_definitions():
    """The key and additional metrics of the configs, attached to an ignite engine fed two batches (3 + 1 images)
    as decollated lists, the way SupervisedEvaluator hands them over."""
    batches = [(PRED[:3], TRUTH[:3]), (PRED[3:], TRUTH[3:])]

    def step(engine, batch):
        pred, label = batch
        return [{"pred": p, "label": t} for p, t in zip(pred, label)]

    engine = Engine(step)
    key, extra = segmentation_metrics("test")
    for name, metric in {**key, **extra}.items():
        metric.attach(engine, name)
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["test_mgca_dice"] == pytest.approx(4 / 9)
    assert metrics["test_mean_dice"] == pytest.approx(2 / 3)
    assert metrics["test_pooled_dice"] == pytest.approx(0.75)


def mgca_reference_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MGCA's MixedLoss(alpha=10), written out from its published formulas (one channel)."""
    max_val = (-logits).clamp(min=0)
    bce = logits - logits * target + max_val + ((-max_val).exp() + (-logits - max_val).exp()).log()
    focal = ((torch.nn.functional.logsigmoid(-logits * (target * 2.0 - 1.0)) * 2).exp() * bce).mean()
    p = logits.sigmoid().reshape(-1)
    t = target.reshape(-1)
    soft_dice = (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return 10 * focal - torch.log(soft_dice)


def test_loss_by_hand_at_zero_logits():
    # p = 0.5 everywhere: focal = 0.25 * ln 2 per pixel; soft Dice = (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1) = 0.6
    logits = torch.zeros(1, 1, 2, 2)
    target = masks([1, 1, 0, 0])
    expected = 10 * 0.25 * math.log(2) - math.log(0.6)
    assert float(MGCASegmentationLoss()(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_loss_equals_the_published_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8) * 3
    target = (torch.rand(3, 1, 8, 8) > 0.7).float()
    assert float(MGCASegmentationLoss()(logits, target)) == pytest.approx(
        float(mgca_reference_loss(logits, target)), rel=1e-5
    )


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        MGCASegmentationLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
