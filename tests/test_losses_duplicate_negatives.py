"""report_duplicate_negatives: the same sentence in another report of the batch ("the lungs are clear.") is a false
negative of the local report InfoNCE. "keep" (published) leaves it in the denominator; "drop" removes it. Checked:
the sentence keys against the token ids, the loss against a per-row cross-entropy written out, gradients, and the
whole model on a batch with and without repeated sentences."""

from __future__ import annotations

import pytest
import torch

from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss
from bundle.networks.sentence_features import sentence_keys, sentence_layout
from tests.test_model_support import tiny_model_kwargs, tiny_text_model_dir


def _layout_batch():
    # three reports, sentence_index as bundle/data/tokenization.py writes it ([CLS]/[SEP]/padding = -1)
    #   report 0: s1 = [10 11 12], s2 = [20 21]
    #   report 1: s1 = [20 21] (= report 0's s2), s2 = [12 11 10] (report 0's s1 reversed), s3 = [10 11 12]
    #   report 2: s1 = [10 11] (a prefix of report 0's s1), s2 = [21]
    ids = torch.tensor(
        [
            [2, 10, 11, 12, 20, 21, 3, 0, 0, 0, 0],
            [2, 20, 21, 12, 11, 10, 10, 11, 12, 3, 0],
            [2, 10, 11, 21, 3, 0, 0, 0, 0, 0, 0],
        ]
    )
    index = torch.tensor(
        [
            [-1, 1, 1, 1, 2, 2, -1, -1, -1, -1, -1],
            [-1, 1, 1, 2, 2, 2, 3, 3, 3, -1, -1],
            [-1, 1, 1, 2, -1, -1, -1, -1, -1, -1, -1],
        ]
    )
    return ids, index


def test_sentence_keys_are_equal_exactly_for_the_same_token_sequence():
    ids, index = _layout_batch()
    keys = sentence_keys(ids, sentence_layout(index)).tolist()
    # valid sentences in row-major order: r0s1, r0s2, r1s1, r1s2, r1s3, r2s1, r2s2
    assert len(keys) == 7
    r0s1, r0s2, r1s1, r1s2, r1s3, r2s1, r2s2 = keys
    assert r0s1 == r1s3 and r0s2 == r1s1  # the same sentence in another report / at another position
    assert len({r0s1, r0s2, r1s2, r2s1, r2s2}) == 5  # reversed order, a prefix, a single token: all different


def _reference_drop(z1, z2, keys, t):
    """Row by row: -log softmax over the own pair and every other sentence with another key."""
    losses = []
    for i in range(len(keys)):
        others = [j for j in range(len(keys)) if j == i or keys[j] != keys[i]]
        logits = torch.stack([z1[i] @ z2[j] / t for j in others])
        losses.append(-(logits[others.index(i)] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_drop_equals_a_cross_entropy_without_the_duplicates_and_keep_is_unchanged():
    g = torch.Generator().manual_seed(0)
    n, d, t = 7, 16, 0.1
    z1 = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    z2 = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    keys = torch.tensor([5, 9, 9, 1, 5, 5, 2])
    drop = ClusterGuidedReportLoss(embed_dim=d, num_clusters=2, temperature=t, duplicate_negatives="drop")
    keep = ClusterGuidedReportLoss(embed_dim=d, num_clusters=2, temperature=t)
    for module in (drop, keep):
        module.eval()  # the k-means state stays untouched: plain InfoNCE (+ the mask)
    out = drop(z1, z2, sentence_keys=keys)
    torch.testing.assert_close(out["ce"], _reference_drop(z1, z2, keys.tolist(), t), atol=1e-5, rtol=1e-5)
    # 4 ordered pairs of 9 and 6 ordered pairs of 5 among the 42
    assert float(out["duplicate_negative_density"]) == pytest.approx(8 / 42)
    plain = keep(z1, z2)
    all_distinct = torch.arange(n)
    torch.testing.assert_close(plain["ce"], _reference_drop(z1, z2, all_distinct.tolist(), t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(drop(z1, z2, sentence_keys=all_distinct)["ce"], plain["ce"])
    assert float(out["ce"]) != pytest.approx(float(plain["ce"]))


def test_a_dropped_duplicate_gets_no_gradient():
    g = torch.Generator().manual_seed(1)
    z1 = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    z2 = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    keys = torch.tensor([3, 3, 7, 8])
    loss = ClusterGuidedReportLoss(embed_dim=8, num_clusters=2, temperature=0.1, duplicate_negatives="drop").eval()
    # only row 0's loss: sentence 1 (row 0's duplicate) must not receive a gradient through row 0's denominator
    z2 = z2.clone().requires_grad_(True)
    out = loss(z1[:2], z2[:2], sentence_keys=keys[:2])  # two rows, each other's duplicate: nothing to contrast
    assert float(out["ce"]) == pytest.approx(0.0, abs=1e-6)
    out["ce"].backward()
    assert torch.count_nonzero(z2.grad) == 0


def test_drop_without_keys_and_an_unknown_mode_are_clear_errors():
    with pytest.raises(ValueError, match="duplicate_negatives must be one of"):
        ClusterGuidedReportLoss(embed_dim=8, duplicate_negatives="mask")
    loss = ClusterGuidedReportLoss(embed_dim=8, duplicate_negatives="drop").eval()
    with pytest.raises(ValueError, match="needs sentence_keys"):
        loss(torch.randn(3, 8), torch.randn(3, 8))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return tiny_text_model_dir(tmp_path_factory.mktemp("tiny_bert_dup"))


def test_the_model_drops_repeated_sentences_only_when_asked(text_dir):
    from bundle.networks.cmcgns import CMCGNS

    ids, index = _layout_batch()
    ids = ids.clamp(max=63)
    mask = (index != -1).long()
    mask[:, 0] = 1
    image = torch.randn(3, 1, 64, 64)
    results = {}
    for mode in ("keep", "drop"):
        torch.manual_seed(0)
        model = CMCGNS(**tiny_model_kwargs(text_dir), report_duplicate_negatives=mode).eval()
        results[mode] = model(image, ids, mask, torch.zeros_like(ids), index)
    assert float(results["drop"]["duplicate_negative_density"]) == pytest.approx(4 / 42)  # 2 pairs, both orders
    assert float(results["keep"]["duplicate_negative_density"]) == 0.0
    assert float(results["drop"]["loss_report"]) != pytest.approx(float(results["keep"]["loss_report"]))
    torch.testing.assert_close(results["drop"]["loss_global"], results["keep"]["loss_global"])
