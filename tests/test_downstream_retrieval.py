"""Whole-split retrieval metrics against a hand-computed case."""

from __future__ import annotations

import pytest
import torch

from bundle.downstream.retrieval import retrieval_metrics, split_retrieval


def test_retrieval_metrics_hand_case():
    # query 0: own score 0.9 is the best -> rank 1; query 1: own 0.2 below 0.5 and 0.7 -> rank 3;
    # query 2: own 0.4 ties with 0.4 -> rank 2 (a tie counts against the query)
    sim = torch.tensor([[0.9, 0.1, 0.0, 0.3], [0.5, 0.2, 0.7, 0.1], [0.4, 0.0, 0.4, 0.3]])
    out = retrieval_metrics(sim, ks=(1, 2, 5))
    assert out["R@1"] == pytest.approx(1 / 3)
    assert out["R@2"] == pytest.approx(2 / 3)
    assert out["R@5"] == pytest.approx(1.0)
    assert out["median_rank"] == 2.0
    assert out["chance_R@1"] == pytest.approx(1 / 4) and out["chance_R@5"] == 1.0  # k capped at the 4 candidates
    with pytest.raises(ValueError, match="queries"):
        retrieval_metrics(sim.t())


def test_split_retrieval_both_directions():
    image = torch.eye(3)
    report = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # studies 1 and 2 swapped
    out = split_retrieval({"image": image, "report": report}, ks=(1,))
    assert out["i2t_R@1"] == pytest.approx(1 / 3) and out["t2i_R@1"] == pytest.approx(1 / 3)
    assert out["chance_R@1"] == pytest.approx(1 / 3)
