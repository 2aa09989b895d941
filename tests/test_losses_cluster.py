"""Hand-computed cases for the cluster-guided report loss and its k-means state (method.md 4.4).

The worked example lives in 2-D so every cosine is a cosine of a known angle:
  z1 at 0, 60, 90 degrees; z2 at 0, 90, 180 degrees; centroids c0 = (1, 0), c1 = (0, 1); t = 1.
  C = [[1, 0, -1], [1/2, r, -1/2], [0, 1, 0]] with r = sqrt(3)/2;  mean(C) = (3/2 + r) / 9 ~= 0.2073.
  nearest centroids of z1: c0, c1, c1 -> the only false-negative pairs are (1, 2) and (2, 1).
  hard negatives (second-nearest): c1, c0, c0 -> own cosines cos(z1_i, z3_i) = 0, 1/2, 0.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss, boundary_margin_loss, hard_negative_logits
from bundle.losses.cluster_state import KMeansClusterState, faiss_spherical_kmeans, greedy_farthest_init

torch.set_num_threads(1)
R = math.sqrt(3) / 2
E = math.e


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


Z1 = torch.tensor([unit(0), unit(60), unit(90)])
Z2 = torch.tensor([unit(0), unit(90), unit(180)])
CENTROIDS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

# Hand-computed cross entropies (rows: -C_ii + log sum exp(logits)).
CE_MULTIPLICATIVE = (
    (-1 + math.log(E + 1 + 1 / E + 3))  # row 0: [1, 0, -1 | 3*0, 0, 0]
    + (-R + math.log(math.exp(0.5) + math.exp(R) + math.exp(-0.5) + math.exp(1.5) + 2))  # row 1: own 3 * 1/2
    + math.log(1 + E + 1 + 3)  # row 2: [0, 1, 0 | 0, 0, 0]
) / 3
CE_ADDITIVE_BIAS_HALF = (
    (-1 + math.log(E + 1 + 1 / E + math.exp(0.5)))  # extra column 0 + 1/2
    + (-R + math.log(math.exp(0.5) + math.exp(R) + math.exp(-0.5) + math.exp(1.0)))  # 1/2 + 1/2
    + math.log(1 + E + 1 + math.exp(0.5))
) / 3
CE_PLAIN = (
    (-1 + math.log(E + 1 + 1 / E)) + (-R + math.log(math.exp(0.5) + math.exp(R) + math.exp(-0.5))) + math.log(2 + E)
) / 3
# BML: pair (1,2): delta = C_12 - C_11 = -1/2 - r -> relu(delta + 0.2) + relu(-delta - 0.5) = r;
#      pair (2,1): delta = C_21 - C_22 = 1 - 0 = 1 -> relu(1.2) + relu(-1.5) = 1.2 (too close to the positive).
BML_MASKED = (R + 1.2) / 2
BML_ALL = (R + 1.2 + 7 * 0.2) / 9  # the 7 unmasked entries have delta = 0 and add alpha each


def initialised_loss(**kwargs) -> ClusterGuidedReportLoss:
    loss = ClusterGuidedReportLoss(embed_dim=2, num_clusters=2, **kwargs)
    loss.state.centroids.copy_(CENTROIDS)
    loss.state.initialized.fill_(True)
    return loss.eval()  # eval: the centroids stay at the hand-chosen values


@pytest.mark.parametrize("reduction,expected_bml", [("masked", BML_MASKED), ("all", BML_ALL)])
def test_multiplicative_hard_negative_and_bml(reduction, expected_bml):
    out = initialised_loss(bml_reduction=reduction, bml_weight=1e-4)(Z1, Z2)
    assert out["ce"].item() == pytest.approx(CE_MULTIPLICATIVE, abs=1e-6)
    assert out["bml"].item() == pytest.approx(expected_bml, abs=1e-6)
    assert out["loss"].item() == pytest.approx(CE_MULTIPLICATIVE + 1e-4 * expected_bml, abs=1e-6)


@pytest.mark.parametrize("reduction,expected_bml", [("masked", BML_MASKED), ("all", BML_ALL)])
def test_additive_hard_negative_and_bml(reduction, expected_bml):
    out = initialised_loss(hard_negative_mode="additive", hard_negative_bias=0.5, bml_reduction=reduction)(Z1, Z2)
    assert out["ce"].item() == pytest.approx(CE_ADDITIVE_BIAS_HALF, abs=1e-6)
    assert out["bml"].item() == pytest.approx(expected_bml, abs=1e-6)


def test_multiplicative_logits_layout():
    c = Z1 @ Z2.T
    logits = hard_negative_logits(c, Z1, CENTROIDS[[1, 0, 0]], "multiplicative", 1.0, weight=3.0)
    assert logits.shape == (3, 6)
    expected_extra = torch.diag(torch.tensor([0.0, 1.5, 0.0]))
    torch.testing.assert_close(logits[:, 3:], expected_extra)
    additive = hard_negative_logits(c, Z1, CENTROIDS[[1, 0, 0]], "additive", 1.0, bias=0.25)
    torch.testing.assert_close(additive[:, 3], torch.tensor([0.25, 0.75, 0.25]))


def test_masked_bml_is_zero_without_false_negatives():
    c = torch.randn(4, 4)
    assert boundary_margin_loss(c, torch.zeros(4, 4), 0.2, 0.5, "masked").item() == 0.0
    assert boundary_margin_loss(c, torch.zeros(4, 4), 0.2, 0.5, "all").item() == pytest.approx(0.2)


@pytest.mark.parametrize("mode,expected_c0", [("mean", [0.95, 0.15]), ("sum", [1.4, 0.3])])
def test_centroid_update_by_hand(mode, expected_c0):
    # c0 = (1,0) gets (1,0) and (0.8,0.6): mean (0.9,0.3), sum (1.8,0.6); c1 = (0,1) gets (0.6,0.8); c2 gets nothing.
    state = KMeansClusterState(num_clusters=3, dim=2, lr=0.5, update_mode=mode)
    state.centroids.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    counts = state.update(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]]))
    assert counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(state.centroids[0], torch.tensor(expected_c0))
    torch.testing.assert_close(state.centroids[1], torch.tensor([0.3, 0.9]))  # 0.5*(0.6,0.8) + 0.5*(0,1)
    torch.testing.assert_close(state.centroids[2], torch.tensor([-1.0, 0.0]))  # no member: unchanged


def test_start_gate_then_hard_negatives():
    loss = ClusterGuidedReportLoss(embed_dim=2, num_clusters=2, centroid_init="greedy", start_cosine=0.1).train()
    # mean(C) ~= 0.2073 > 0.1: gate closed, plain InfoNCE, not initialised.
    out = loss(Z1, Z2)
    assert out["loss"].item() == pytest.approx(CE_PLAIN, abs=1e-6)
    assert not loss.state.is_initialized and int(loss.state.step) == 1
    # Eval mode never initialises, whatever the gate says.
    loss.start_cosine = 0.4
    loss.eval()(Z1, Z2)
    assert not loss.state.is_initialized and int(loss.state.step) == 1
    # Gate open (0.2073 <= 0.4): initialises on this step, which still uses plain InfoNCE.
    out = loss.train()(Z1, Z2)
    assert loss.state.is_initialized and out["kmeans_initialized"].item() == 1.0
    assert out["loss"].item() == pytest.approx(CE_PLAIN, abs=1e-6)
    assert out["bml"].item() == 0.0
    # Greedy centroids are rows of z2.
    for centroid in loss.state.centroids:
        assert torch.isclose(Z2, centroid).all(dim=1).any()
    # Next step: centroid update + hard negatives, the loss is no longer plain InfoNCE.
    out = loss(Z1, Z2)
    assert out["loss"].item() != pytest.approx(CE_PLAIN, abs=1e-3)
    assert int(loss.state.step) == 3


def test_greedy_initialisation_follows_the_last_chosen_row():
    # Angles 0, 10, 100, 180, 200 degrees, start at row 0.
    # From 0: smallest cosine is 180 (row 3). From 180 (not from the set {0, 180}): cos(170) for row 1 is smallest.
    # A farthest-from-all rule would take 100 instead, so this separates the published rule from k-means++ style.
    data = torch.tensor([unit(a) for a in (0, 10, 100, 180, 200)])
    chosen = greedy_farthest_init(data, 3, first_index=0)
    torch.testing.assert_close(chosen, data[[0, 3, 1]])


def test_greedy_waits_for_enough_vectors_and_says_so_once(caplog):
    state = KMeansClusterState(num_clusters=4, dim=2, init_method="greedy")
    with caplog.at_level(logging.WARNING, logger="bundle.losses.cluster_state"):
        assert not state.observe_and_maybe_initialise(Z2, gate_open=True)  # 3 vectors < K = 4
        assert not state.observe_and_maybe_initialise(Z2, gate_open=True)
    assert not state.is_initialized
    assert sum("waiting" in r.message for r in caplog.records) == 1
    assert state.observe_and_maybe_initialise(torch.cat([Z2, Z1]), gate_open=True)


def test_faiss_initialisation_uses_the_bank_of_recent_batches():
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3]
    batches = [
        torch.nn.functional.normalize(directions.repeat(20, 1) + 0.05 * torch.randn(60, 8, generator=g), dim=-1)
        for _ in range(3)
    ]
    state = KMeansClusterState(num_clusters=3, dim=8, init_method="faiss", bank_batches=2, seed=7)
    assert not state.observe_and_maybe_initialise(batches[0], gate_open=False)
    assert not state.observe_and_maybe_initialise(batches[1], gate_open=False)
    assert state.observe_and_maybe_initialise(batches[2], gate_open=True)
    # Deterministic: the same as FAISS run directly on the last M = 2 batches with the same seed.
    direct = faiss_spherical_kmeans(torch.cat(batches[1:]), 3, 20, seed=7)
    torch.testing.assert_close(state.centroids, direct)
    # Spherical k-means finds the three directions.
    best = (torch.nn.functional.normalize(state.centroids, dim=-1) @ directions.T).max(dim=0).values
    assert bool((best > 0.99).all())
    assert np.allclose(np.linalg.norm(state.centroids.numpy(), axis=1), 1.0, atol=1e-5)


def test_state_survives_state_dict_save_and_load():
    loss = initialised_loss()
    loss.train()(Z1, Z2)  # one update moves the centroids
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    restored = ClusterGuidedReportLoss(embed_dim=2, num_clusters=2)
    assert not restored.state.is_initialized
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state.is_initialized
    torch.testing.assert_close(restored.state.centroids, loss.state.centroids)
    assert int(restored.state.step) == int(loss.state.step) == 1
    assert set(loss.state_dict()) == {"state.centroids", "state.initialized", "state.step"}


def test_centroids_do_not_change_in_eval_mode():
    loss = initialised_loss()
    before = loss.state.centroids.clone()
    out = loss.eval()(Z1, Z2)
    assert torch.equal(loss.state.centroids, before) and int(loss.state.step) == 0
    assert out["centroid_usage"].item() == pytest.approx(1.0)  # both centroids have z2 members
    loss.train()(Z1, Z2)
    assert not torch.equal(loss.state.centroids, before)


def test_hard_negatives_and_clustering_are_detached():
    loss = initialised_loss().train()
    loss.state.centroids.requires_grad_(True)  # would collect a gradient if a hard negative were not detached
    z1 = Z1.clone().requires_grad_(True)
    z2 = Z2.clone().requires_grad_(True)
    out = loss(z1, z2)
    assert loss.state.centroids.grad_fn is None  # the update used detached z2
    out["loss"].backward()
    assert loss.state.centroids.grad is None
    assert z1.grad is not None and z2.grad is not None
