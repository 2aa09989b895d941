"""Each batched component equals the per-report loop reference (bundle/losses/reference.py) on ragged batches,
including reports with a single sentence, padding-heavy batches and sentence numbers cut away by truncation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model_support import ragged_sentence_index

from bundle.losses.cluster_report_loss import ClusterGuidedReportLoss
from bundle.losses.global_contrastive import GlobalContrastiveLoss
from bundle.losses.local_image_loss import LocalImageSimSiamLoss
from bundle.losses.reference import (
    loop_attention_pool,
    loop_cluster_report_loss,
    loop_cross_attention,
    loop_gather_sentences,
    loop_global_loss,
    loop_simsiam,
)
from bundle.networks.attention_pool import MeanQueryAttentionPool
from bundle.networks.cross_modal_attention import SigmoidCrossModalAttention
from bundle.networks.sentence_features import gather_sentences

torch.set_num_threads(1)
ATOL = 1e-5
D, P = 16, 9
LAYOUTS = {
    "mixed": ([1, 5, 2, 1, 8, 3], False),
    "padding_heavy": ([8, 1, 1, 1, 1], False),
    "single_sentences": ([1, 1, 1], False),
    "truncation_gaps": ([4, 1, 3, 6], True),
}


def ragged_batch(layout: str, seed: int = 0):
    counts, gap = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    sentence_index = ragged_sentence_index(counts, 40, g, gap=gap)
    tokens = torch.randn(len(counts), 40, D, generator=g)
    image_tokens = F.normalize(torch.randn(len(counts), P, D, generator=g), dim=-1)
    return tokens, sentence_index, image_tokens


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gather_sentences_matches_loop(layout):
    tokens, sentence_index, _ = ragged_batch(layout)
    sentences, valid = gather_sentences(tokens, sentence_index)
    reference = loop_gather_sentences(tokens, sentence_index)
    assert valid.sum(1).tolist() == [r.shape[0] for r in reference]
    for b, ref in enumerate(reference):
        torch.testing.assert_close(sentences[b, : ref.shape[0]], ref, atol=ATOL, rtol=0)
        assert torch.all(sentences[b, ref.shape[0] :] == 0)
    assert sentences.shape[1] == max(r.shape[0] for r in reference)


def test_gather_sentences_rejects_a_report_without_sentences():
    tokens = torch.randn(2, 6, D)
    sentence_index = torch.tensor([[-1, 1, 1, -1, -1, -1], [-1, -1, -1, -1, -1, -1]])
    with pytest.raises(ValueError, match=r"\[1\]"):
        gather_sentences(tokens, sentence_index)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sentence_attention_pool_matches_loop(layout):
    torch.manual_seed(0)
    tokens, sentence_index, _ = ragged_batch(layout)
    sentences, valid = gather_sentences(tokens, sentence_index)
    pool = MeanQueryAttentionPool(D, num_heads=8)
    batched = pool(sentences, valid)
    reference = loop_attention_pool(pool, loop_gather_sentences(tokens, sentence_index))
    torch.testing.assert_close(batched, reference, atol=ATOL, rtol=0)


def test_image_attention_pool_with_positions_matches_loop():
    torch.manual_seed(0)
    tokens = torch.randn(3, P, D)
    pool = MeanQueryAttentionPool(D, num_heads=8, num_positions=P)
    torch.testing.assert_close(pool(tokens), loop_attention_pool(pool, list(tokens)), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cross_attention_matches_loop_and_ignores_padding(layout):
    torch.manual_seed(0)
    tokens, sentence_index, image_tokens = ragged_batch(layout)
    sentences, valid = gather_sentences(tokens, sentence_index)
    attn = SigmoidCrossModalAttention(D)
    out = attn(image_tokens, sentences, valid)
    f_ir, f_ri, a1s, a2s = loop_cross_attention(attn, image_tokens, loop_gather_sentences(tokens, sentence_index))
    torch.testing.assert_close(out.image_to_text[valid], torch.cat(f_ir), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.text_to_image, torch.stack(f_ri), atol=ATOL, rtol=0)
    for b in range(len(f_ir)):
        s = f_ir[b].shape[0]
        torch.testing.assert_close(out.attn_image_to_text[b, :s], a1s[b], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.attn_text_to_image[b, :, :s], a2s[b], atol=ATOL, rtol=0)
    # Whatever sits in the padded sentence slots contributes exactly nothing to f_RI.
    garbage = sentences.masked_fill(~valid.unsqueeze(-1), 1e3)
    assert torch.equal(attn(image_tokens, garbage, valid).text_to_image, out.text_to_image)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_simsiam_matches_loop(layout):
    torch.manual_seed(0)
    tokens, sentence_index, image_tokens = ragged_batch(layout)
    sentences, valid = gather_sentences(tokens, sentence_index)
    text_to_image = SigmoidCrossModalAttention(D)(image_tokens, sentences, valid).text_to_image
    loss = LocalImageSimSiamLoss(D)
    torch.testing.assert_close(
        loss(image_tokens, text_to_image), loop_simsiam(loss, image_tokens, list(text_to_image)), atol=ATOL, rtol=0
    )


def test_global_loss_matches_loop():
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(7, D, generator=g), dim=-1)
    text = F.normalize(torch.randn(7, D, generator=g), dim=-1)
    loss = GlobalContrastiveLoss(0.1)
    out = loss(image, text)
    torch.testing.assert_close(out["loss"], loop_global_loss(image, text, torch.tensor(10.0)), atol=ATOL, rtol=0)
    # Retrieval accuracy by hand: row i is a hit if its own column has the largest logit.
    hits = (image @ text.T).argmax(1) == torch.arange(7)
    assert out["acc_i2t_top1"].item() == pytest.approx(hits.float().mean().item())
    assert out["acc_i2t_top5"].item() >= out["acc_i2t_top1"].item()


def test_logit_scale_clamp_only_in_fixed_mode():
    fixed, official = GlobalContrastiveLoss(0.001, 100.0), GlobalContrastiveLoss(0.001, None)
    assert fixed.scale().item() == pytest.approx(100.0)
    assert official.scale().item() == pytest.approx(1000.0, rel=1e-5)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    "mode,update,reduction",
    [("multiplicative", "sum", "all"), ("multiplicative", "mean", "masked"), ("additive", "mean", "masked")],
)
def test_cluster_report_loss_matches_row_loop(layout, mode, update, reduction):
    torch.manual_seed(0)
    tokens, sentence_index, image_tokens = ragged_batch(layout)
    sentences, valid = gather_sentences(tokens, sentence_index)
    f_ir = SigmoidCrossModalAttention(D)(image_tokens, sentences, valid).image_to_text
    z1, z2 = sentences[valid], f_ir[valid]
    loss = ClusterGuidedReportLoss(
        embed_dim=D,
        num_clusters=3,
        centroid_lr=0.3,
        centroid_update=update,
        hard_negative_mode=mode,
        hard_negative_bias=0.25,
        bml_reduction=reduction,
        bml_weight=0.5,
    ).train()
    loss.state.centroids.copy_(torch.randn(3, D))
    loss.state.initialized.fill_(True)
    reference = loop_cluster_report_loss(
        z1,
        z2,
        loss.state.centroids,
        True,
        True,
        lr=0.3,
        update_mode=update,
        hard_negative_mode=mode,
        hard_negative_bias=0.25,
        bml_weight=0.5,
        bml_reduction=reduction,
    )
    out = loss(z1, z2)
    for key in ("loss", "ce", "bml"):
        torch.testing.assert_close(out[key], reference[key], atol=ATOL, rtol=0)
    torch.testing.assert_close(loss.state.centroids, reference["centroids"], atol=ATOL, rtol=0)


def test_cluster_report_loss_before_initialisation_is_plain_infonce():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, D), torch.randn(6, D)
    loss = ClusterGuidedReportLoss(embed_dim=D, num_clusters=3, start_cosine=-2.0).train()  # gate never opens
    reference = loop_cluster_report_loss(z1, z2, loss.state.centroids, False, True)
    torch.testing.assert_close(loss(z1, z2)["loss"], reference["loss"], atol=ATOL, rtol=0)


HOST_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy", "nonzero"}


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts calls that read a tensor's value on the host (a device sync on a GPU), boolean selections included."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        bool_index = name == "__getitem__" and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        if name in HOST_READS or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sentence_layout_reads_the_host_once_and_valid_rows_equal_boolean_selection(layout):
    from bundle.networks.sentence_features import sentence_layout, sentence_means, sentence_tokens, valid_rows

    tokens, sentence_index, _ = ragged_batch(layout)
    with HostReads() as reads:
        plan = sentence_layout(sentence_index)
        sentences, valid = sentence_means(sentence_tokens(tokens, plan), plan)
        rows = valid_rows(sentences, plan)
    assert reads.calls == ["tolist"]  # the data-dependent sizes, all in one read
    torch.testing.assert_close(sentences, gather_sentences(tokens, sentence_index)[0], atol=0, rtol=0)
    assert torch.equal(rows, sentences[valid]) and rows.shape[0] == plan.sentences == int(valid.sum())
    assert torch.equal(sentence_tokens(tokens, plan), tokens[sentence_index > 0])
