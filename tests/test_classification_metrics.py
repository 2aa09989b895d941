"""AUROC / accuracy against scikit-learn and a hand-computed case; undefined classes never reach the macro as NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score

from bundle.downstream.metrics import MacroAUROC, MultiClassAccuracy, auroc_per_class, multiclass_accuracy


def test_auroc_hand_computed_case():
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3 of 4 ordered
    result = auroc_per_class(torch.tensor([[0.8], [0.4], [0.6], [0.2]]), torch.tensor([[1.0], [1.0], [0.0], [0.0]]))
    assert result.per_class == {"0": pytest.approx(0.75)}
    assert result.macro == pytest.approx(0.75)


def test_auroc_matches_sklearn_and_skips_undefined_classes():
    rng = np.random.default_rng(0)
    pred = rng.random((40, 4))
    label = (rng.random((40, 4)) < 0.4).astype(float)
    label[:, 2] = 0.0  # no positive
    label[:, 3] = 1.0  # no negative
    result = auroc_per_class(torch.tensor(pred), torch.tensor(label), class_names=["a", "b", "c", "d"])
    expected = {name: roc_auc_score(label[:, c], pred[:, c]) for c, name in enumerate("ab")}
    assert result.per_class == pytest.approx(expected)
    assert result.undefined == {"c": "no positive", "d": "no negative"}
    assert result.macro == pytest.approx(np.mean(list(expected.values())))
    assert not math.isnan(result.macro)


def test_multiclass_accuracy_and_ovr_auroc_match_sklearn():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(30, 3)))
    probs = logits.softmax(1)
    target = rng.integers(0, 3, 30)
    onehot = torch.nn.functional.one_hot(torch.tensor(target), 3).double()
    assert multiclass_accuracy(probs, onehot) == pytest.approx(float(np.mean(probs.numpy().argmax(1) == target)))
    macro = auroc_per_class(probs, onehot).macro
    assert macro == pytest.approx(roc_auc_score(target, probs.numpy(), multi_class="ovr", average="macro"))


def test_ignite_metrics_accumulate_decollated_batches_and_report_per_class():
    rng = np.random.default_rng(2)
    pred = torch.tensor(rng.random((20, 3)))
    label = torch.tensor((rng.random((20, 3)) < 0.5).astype(float))
    label[:, 1] = 0.0
    batches = [list(zip(pred[i : i + 6], label[i : i + 6])) for i in range(0, 20, 6)]  # per-item tensors, as decollated

    def step(engine, batch):
        return [p for p, _ in batch], [y for _, y in batch]

    engine = Engine(step)
    MacroAUROC(class_names=["x", "y", "z"]).attach(engine, "val_auroc")
    MultiClassAccuracy().attach(engine, "val_acc")
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    expected = {c: roc_auc_score(label[:, i], pred[:, i]) for i, c in ((0, "x"), (2, "z"))}
    assert metrics["val_auroc"] == pytest.approx(np.mean(list(expected.values())))
    assert metrics["val_auroc/x"] == pytest.approx(expected["x"])
    assert "val_auroc/y" not in metrics and metrics["val_auroc_num_undefined"] == 1
    assert metrics["val_acc"] == pytest.approx(multiclass_accuracy(pred, label))
