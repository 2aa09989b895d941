"""Collapse and alignment diagnostics (bundle/losses/diagnostics.py) against brute-force loops and hand-made cases,
and the once-per-epoch collapse warning (bundle/engines/collapse_monitor.py)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine

from bundle.engines.collapse_monitor import CollapseMonitor
from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss, assignment_entropy
from bundle.losses.diagnostics import (
    collapse_findings,
    effective_rank,
    local_diagnostics,
    mean_pairwise_cosine,
    normalised_entropy,
    std_ratio,
    within_and_across_cosine,
)

torch.set_num_threads(1)


def unit_rows(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_pairwise_cosines_match_loops():
    u = unit_rows(3, 4, 8)
    flat = u.flatten(0, 1)
    within, across, pairs_w, pairs_a = 0.0, 0.0, 0, 0
    for i in range(12):
        for j in range(12):
            if i == j:
                continue
            cos = float(flat[i] @ flat[j])
            if i // 4 == j // 4:
                within, pairs_w = within + cos, pairs_w + 1
            else:
                across, pairs_a = across + cos, pairs_a + 1
    w, a = within_and_across_cosine(u)
    assert w.item() == pytest.approx(within / pairs_w, abs=1e-5)
    assert a.item() == pytest.approx(across / pairs_a, abs=1e-5)
    assert mean_pairwise_cosine(flat).item() == pytest.approx((within + across) / (pairs_w + pairs_a), abs=1e-5)


def test_identical_vectors_are_collapsed_and_orthonormal_ones_are_not():
    same = F.normalize(torch.ones(64, 16), dim=-1)
    assert std_ratio(same).item() == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(same).item() == pytest.approx(1.0, abs=1e-4)
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0, abs=1e-5)
    eye = torch.eye(16)
    # 16 orthonormal rows: equal singular values -> effective rank 16; per-dim std sqrt(1/16 - 1/256) * 4
    assert effective_rank(eye).item() == pytest.approx(16.0, rel=1e-4)
    assert std_ratio(eye).item() == pytest.approx(math.sqrt(1 / 16 - 1 / 256) * 4, rel=1e-4)
    # many isotropic unit vectors: std ratio close to 1
    assert std_ratio(unit_rows(4000, 16)).item() == pytest.approx(1.0, abs=0.05)


def test_normalised_entropy_uniform_onehot_and_padding():
    weights = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.0, 0.0, 0.0], [0.2, 0.2, 7.0, 7.0]])
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])
    # rows: uniform over 4 -> 1; one-hot -> 0; uniform over its 2 valid entries (padding ignored) -> 1
    assert normalised_entropy(weights, valid).item() == pytest.approx(2 / 3, abs=1e-5)
    only_one_valid = torch.tensor([[True, False, False, False]])
    assert normalised_entropy(weights[:1], only_one_valid).item() == 0.0  # no row with >= 2 entries


def test_local_diagnostics_of_a_uniform_attention_and_collapsed_tokens():
    b, p, s, d = 2, 4, 3, 8
    tokens = F.normalize(torch.ones(b, p, d), dim=-1)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    a1 = torch.full((b, s, p), 0.5) * valid.unsqueeze(-1)
    a2 = torch.full((b, p, s), 0.5) * valid.unsqueeze(1)
    out = local_diagnostics(tokens, torch.randn(b, p, d), torch.randn(b, s, d), a1, a2, valid)
    assert out["diag_a1_entropy"].item() == pytest.approx(1.0, abs=1e-6)
    assert out["diag_a1_mean"].item() == pytest.approx(0.5)
    assert out["diag_a2_mean"].item() == pytest.approx(0.5)  # padded sentences excluded
    assert out["diag_a2_entropy"].item() == pytest.approx(1.0, abs=1e-6)  # image 2 has one sentence: not counted
    assert out["diag_tok_cos_within"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["diag_tok_std"].item() == pytest.approx(0.0, abs=1e-5)
    findings = collapse_findings({k: float(v) for k, v in out.items()})
    assert any(f.startswith("image tokens collapsed") for f in findings)
    assert any("nearly identical" in f for f in findings)


def test_diverse_batch_is_not_flagged():
    b, p, s, d = 8, 9, 4, 32
    valid = torch.ones(b, s, dtype=torch.bool)
    out = local_diagnostics(
        unit_rows(b, p, d),
        unit_rows(b, p, d, seed=1),
        unit_rows(b, s, d, seed=2),
        torch.rand(b, s, p),
        torch.rand(b, p, s),
        valid,
    )
    assert collapse_findings({k: float(v) for k, v in out.items()}) == []


def test_report_loss_local_retrieval_and_cluster_statistics():
    z = torch.eye(4)
    loss = ClusterGuidedReportLoss(embed_dim=4, num_clusters=2, temperature=0.1).eval()
    out = loss(z, z)  # every sentence's own z2 is its best match
    assert out["local_top1"].item() == 1.0
    assert out["local_chance_top1"].item() == pytest.approx(0.25)
    assert loss(z, z.roll(1, dims=0))["local_top1"].item() == 0.0  # own z2 orthogonal: never the best
    # initialised: centroids e0 and e1; z1 rows 0, 2 -> c0 (cosines 1 and 0.6) and rows 1, 3 -> c1
    z1 = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.6, 0.0, 0.8, 0], [0, 0.6, 0, 0.8]])
    loss.state.centroids.copy_(torch.eye(4)[:2])
    loss.state.initialized.fill_(True)
    out = loss(z1, z1)
    assert out["fn_mask_density"].item() == pytest.approx(4 / 12)  # pairs (0,2), (2,0), (1,3), (3,1)
    # hard negative = the other centroid: cosines 0, 0, 0, 0 for rows 0, 1 and 0 for rows 2, 3
    assert out["hard_negative_cos"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["assignment_entropy"].item() == pytest.approx(1.0)  # 2 members in each of the 2 clusters
    assert assignment_entropy(torch.tensor([5.0, 0.0, 0.0, 0.0])).item() == pytest.approx(0.0)


def test_start_gate_on_cosine_ignores_the_temperature():
    z1 = F.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.4], [1.0, 0.0]]), dim=-1)
    mean_cos = float((z1 @ z1.t()).mean())
    assert 0.9 < mean_cos < 1.0
    for gate_on, opens in (("cosine", True), ("logits", False)):
        # t = 0.5: mean(C) = 2 * mean cosine > 1 >= gate, mean cosine < 1 = gate
        loss = ClusterGuidedReportLoss(
            embed_dim=2, num_clusters=2, temperature=0.5, start_cosine=1.0, centroid_init="greedy", gate_on=gate_on
        ).train()
        loss(z1, z1)
        assert loss.state.is_initialized is opens, gate_on
    with pytest.raises(ValueError, match="gate_on"):
        ClusterGuidedReportLoss(embed_dim=2, num_clusters=2, gate_on="mean")


def run_monitor(values: dict[str, float], epochs: int, caplog) -> Engine:
    engine = Engine(lambda e, b: dict(values))
    CollapseMonitor().attach(engine)
    with caplog.at_level(logging.WARNING, logger="bundle.engines.collapse_monitor"):
        engine.run(range(5), max_epochs=epochs)
    return engine


def test_collapse_monitor_warns_once_per_epoch(caplog):
    collapsed = {"diag_tok_std": 0.05, "diag_tok_erank": 1.2, "diag_tok_cos_within": 0.99, "diag_z2_std": 0.5}
    engine = run_monitor(collapsed, epochs=3, caplog=caplog)
    warnings = [r for r in caplog.records if "collapse detected" in r.getMessage()]
    assert len(warnings) == 3  # one per epoch, not one per iteration (15)
    assert "image tokens collapsed" in warnings[0].getMessage()
    assert len(engine.state.collapse_findings) == 2


def test_collapse_monitor_is_quiet_for_a_healthy_run(caplog):
    healthy = {"diag_tok_std": 0.8, "diag_tok_cos_within": 0.4, "diag_z2_std": 0.6, "diag_fri_std": 0.7}
    engine = run_monitor(healthy, epochs=2, caplog=caplog)
    assert not [r for r in caplog.records if "collapse detected" in r.getMessage()]
    assert engine.state.collapse_findings == []
