"""The switches added against the inert local losses (docs/method_notes.md): each one changes what it claims and the
published value leaves the published arithmetic untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss
from bundle.losses.local_image_loss import LocalImageSimSiamLoss
from bundle.networks.cross_modal_attention import SigmoidCrossModalAttention

torch.set_num_threads(1)
D = 16


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(2, 5, D, generator=g), dim=-1)
    sentences = F.normalize(torch.randn(2, 3, D, generator=g), dim=-1)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    return image, sentences, valid


def test_published_attention_scale_is_the_constant_one_over_sqrt_d():
    attn = SigmoidCrossModalAttention(D)
    assert attn.scale == 1 / math.sqrt(D)
    assert not any("logit_scale" in name for name, _ in attn.named_parameters())
    image, sentences, valid = inputs()
    a1 = attn(image, sentences, valid).attn_image_to_text
    # method.md 4.2 written out: sigmoid(Q_t(R) K_i(I)^T / sqrt(D))
    expected = torch.sigmoid(attn.q_text(sentences) @ attn.k_image(image).transpose(1, 2) / math.sqrt(D))
    torch.testing.assert_close(a1, expected * valid.unsqueeze(-1))


def test_learnable_attention_scale_multiplies_the_logits_and_gets_a_gradient():
    torch.manual_seed(0)
    attn = SigmoidCrossModalAttention(D, logit_scale=8.0)
    image, sentences, valid = inputs()
    assert float(attn.scale.detach()) == pytest.approx(8.0)
    out = attn(image, sentences, valid)
    logits = attn.q_text(sentences) @ attn.k_image(image).transpose(1, 2) * 8.0
    torch.testing.assert_close(out.attn_image_to_text, torch.sigmoid(logits) * valid.unsqueeze(-1))
    out.image_to_text.sum().backward()
    assert attn.log_logit_scale.grad is not None and attn.log_logit_scale.grad.abs() > 0
    # spread of the weights: the published scale leaves every weight near 0.5, the larger scale does not
    flat = SigmoidCrossModalAttention(D)
    flat.load_state_dict({k: v for k, v in attn.state_dict().items() if k != "log_logit_scale"})
    spread_published = flat(image, sentences, valid).attn_image_to_text[valid].std()
    assert out.attn_image_to_text[valid].std() > 4 * spread_published
    fixed = SigmoidCrossModalAttention(D, logit_scale=8.0, learn_logit_scale=False)
    assert "log_logit_scale" in dict(fixed.named_buffers()) and not list(
        n for n, _ in fixed.named_parameters() if "scale" in n
    )


def test_predictor_batchnorm_switch():
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in LocalImageSimSiamLoss(D).modules())
    loss = LocalImageSimSiamLoss(D, predictor_norm="batchnorm").train()
    norms = [m for m in loss.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 1 and norms[0].num_features == D // 2
    image, _, _ = inputs()
    value = loss(image, torch.randn(2, 5, D))  # statistics over all 10 tokens of each branch
    assert value.shape == () and -1 <= float(value) <= 1
    assert not dict(loss.named_buffers())  # batch statistics only: nothing per rank to drift apart under DDP
    text = torch.randn(2, 5, D)
    torch.testing.assert_close(loss.train()(image, text), loss.eval()(image, text))
    with pytest.raises(ValueError, match="predictor_norm"):
        LocalImageSimSiamLoss(D, predictor_norm="layernorm")


def test_kmeans_start_step_keeps_the_gate_closed_until_then():
    z = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    loss = ClusterGuidedReportLoss(
        embed_dim=4, num_clusters=2, centroid_init="greedy", start_cosine=2.0, start_step=3
    ).train()
    for step in range(3):  # gate value is always below 2: only the step keeps it closed
        loss(z, z)
        assert not loss.state.is_initialized, step
    loss(z, z)
    assert loss.state.is_initialized


def test_softmax_cross_attention_against_a_per_report_loop():
    # cross_attention_normalisation "softmax": A1 sums to 1 over each image's tokens for every valid sentence, A2
    # over each report's VALID sentences for every token; padded sentences weigh nothing in either direction
    torch.manual_seed(0)
    b, p, s, d = 3, 4, 3, 8
    attention = SigmoidCrossModalAttention(d, logit_scale=2.0, normalisation="softmax")
    tokens = torch.nn.functional.normalize(torch.randn(b, p, d), dim=-1)
    sentences = torch.nn.functional.normalize(torch.randn(b, s, d), dim=-1)
    valid = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    sentences = sentences * valid.unsqueeze(-1)
    out = attention(tokens, sentences, valid)
    scale = 2.0
    for i in range(b):
        n = int(valid[i].sum())
        q_t, k_i = attention.q_text(sentences[i, :n]), attention.k_image(tokens[i])
        a1 = torch.softmax(q_t @ k_i.t() * scale, dim=-1)  # [n, P]
        q_i, k_t = attention.q_image(tokens[i]), attention.k_text(sentences[i, :n])
        a2 = torch.softmax(q_i @ k_t.t() * scale, dim=-1)  # [P, n]
        torch.testing.assert_close(out.attn_image_to_text[i, :n], a1)
        torch.testing.assert_close(out.attn_text_to_image[i, :, :n], a2)
        torch.testing.assert_close(out.image_to_text[i, :n], a1 @ attention.v_image(tokens[i]))
        torch.testing.assert_close(out.text_to_image[i], a2 @ attention.v_text(sentences[i, :n]))
        assert torch.count_nonzero(out.attn_image_to_text[i, n:]) == 0
        assert torch.count_nonzero(out.attn_text_to_image[i, :, n:]) == 0
    with pytest.raises(ValueError, match="normalisation must be one of"):
        SigmoidCrossModalAttention(d, normalisation="relu")
