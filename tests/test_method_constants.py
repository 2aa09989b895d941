"""Constants of the method checked against method.md's own numbers, written here (not read from the modules): a wrong
constant in the code cannot also be the expected value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from bundle.data.image_io import load_radiograph
from bundle.losses.global_contrastive import GlobalContrastiveLoss
from bundle.networks.cross_modal_attention import SigmoidCrossModalAttention

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def test_official_cross_attention_is_sigmoid_of_qk_over_sqrt_d():
    """method.md 4.2: A1 = sigmoid(Q_t(R) K_i(I)^T / sqrt(D)), A2 = sigmoid(Q_i(I) K_t(R)^T / sqrt(D))."""
    d = 16
    torch.manual_seed(0)
    attn = SigmoidCrossModalAttention(d, logit_scale=None)
    image, sentences = torch.randn(2, 9, d), torch.randn(2, 3, d)
    valid = torch.ones(2, 3, dtype=torch.bool)
    out = attn(image, sentences, valid)
    a1 = torch.sigmoid(attn.q_text(sentences) @ attn.k_image(image).transpose(1, 2) / 4.0)  # sqrt(16) = 4
    a2 = torch.sigmoid(attn.q_image(image) @ attn.k_text(sentences).transpose(1, 2) / 4.0)
    torch.testing.assert_close(out.attn_image_to_text, a1)
    torch.testing.assert_close(out.attn_text_to_image, a2)
    torch.testing.assert_close(out.image_to_text, a1 @ attn.v_image(image))


def test_global_loss_starts_at_temperature_0_1_and_clamps_the_scale_at_100():
    """method.md 4.1: tau initialised at 0.1 (s = 10); s <= 100 in fixed mode, no clamp in official mode."""
    loss = GlobalContrastiveLoss()
    image, text = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    logits = 10.0 * image @ text.t()
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(loss(image, text)["loss"], expected)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000.0))
    capped = 100.0 * image @ text.t()
    expected = (F.cross_entropy(capped, labels) + F.cross_entropy(capped.t(), labels)) / 2
    torch.testing.assert_close(loss(image, text)["loss"], expected)
    official = GlobalContrastiveLoss(max_logit_scale_exp=None)
    with torch.no_grad():
        official.logit_scale.fill_(math.log(1000.0))
    free = 1000.0 * image @ text.t()
    expected = (F.cross_entropy(free, labels) + F.cross_entropy(free.t(), labels)) / 2
    torch.testing.assert_close(official(image, text)["loss"], expected)


def test_published_values_in_the_official_preset_and_fixed_defaults():
    """method.md 4.4 / 4.5 / 4.6 values: K = 128, gate 0.4, centroid lr 0.001, alpha 0.2, beta 0.5, BML weight 1e-4,
    hard-negative weight 3, unit loss weights; official t = 1.0, multiplicative hard negatives."""
    pretrain = yaml.safe_load((ROOT / "configs" / "pretrain.yaml").read_text())["network_def"]
    official = yaml.safe_load((ROOT / "configs" / "official.yaml").read_text())
    expected = {
        "num_clusters": 128,
        "kmeans_start_cosine": 0.4,
        "centroid_lr": 0.001,
        "bml_alpha": 0.2,
        "bml_beta": 0.5,
        "bml_weight": 1.0e-4,
        "hard_negative_weight": 3.0,
        "weight_img": 1.0,
        "weight_report": 1.0,
        "weight_global": 1.0,
        "weight_recon": 1.0,
        "temperature_init": 0.1,
        "embed_dim": 768,
    }
    assert {k: pretrain[k] for k in expected} == expected
    assert official["network_def#cluster_temperature"] == 1.0
    assert official["network_def#hard_negative_mode"] == "multiplicative"


def test_eight_and_sixteen_bit_images_are_scaled_by_their_type_not_stretched(tmp_path):
    """An 8-bit image is divided by 255 and a 16-bit one by 65535 even when they do not span their range: a
    min-max stretch would change the intensities between images of one dataset."""
    eight = np.array([[50, 100], [150, 200]], dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    np.testing.assert_allclose(load_radiograph(tmp_path / "eight.png"), eight / 255.0, atol=1e-7)
    sixteen = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    np.testing.assert_allclose(load_radiograph(tmp_path / "sixteen.png"), sixteen / 65535.0, atol=1e-7)
