"""CM-MIR (method.md 4.5): token masking in both modes, decoder shapes and output range, the ViT decoder's published
bugs as switches, and the reconstruction loss over the whole image and over masked regions."""

from __future__ import annotations

import pytest
import torch

from bundle.losses.reconstruction_loss import reconstruction_l1_loss, token_mask_to_pixels
from bundle.networks.reconstruction_decoder import (
    ResNetReconstructionDecoder,
    ViTReconstructionDecoder,
    mask_image_tokens,
)

torch.set_num_threads(1)


def test_positions_mask_drops_exactly_half_of_the_positions_per_image():
    torch.manual_seed(0)
    tokens = torch.rand(5, 49, 8) + 0.1
    masked, token_mask = mask_image_tokens(tokens, 0.5, "positions", "resnet")
    assert token_mask.sum(1).tolist() == [24] * 5  # round(0.5 * 49)
    assert torch.all(masked[token_mask] == 0)
    assert torch.equal(masked[~token_mask], tokens[~token_mask])  # kept tokens unchanged, no rescale
    assert not torch.equal(token_mask[0], token_mask[1])  # drawn per image


def test_official_resnet_mask_drops_channels_at_every_position():
    torch.manual_seed(0)
    tokens = torch.rand(4, 9, 64) + 0.1
    masked, token_mask = mask_image_tokens(tokens, 0.5, "official", "resnet")
    assert token_mask is None
    zero_channels = masked == 0
    # The same channels are zero at every position of an image; kept values are not rescaled.
    assert torch.equal(zero_channels, zero_channels[:, :1].expand_as(zero_channels))
    assert 0 < zero_channels[:, 0].float().mean() < 1
    assert torch.equal(masked[~zero_channels], tokens[~zero_channels])


def test_official_vit_mask_drops_positions_and_rescales():
    torch.manual_seed(0)
    tokens = torch.rand(4, 16, 8) + 0.1
    masked, token_mask = mask_image_tokens(tokens, 0.5, "official", "vit")
    assert torch.all(masked[token_mask] == 0)
    torch.testing.assert_close(masked[~token_mask], 2 * tokens[~token_mask])


@pytest.mark.parametrize("relu_before_output", [False, True])
def test_resnet_decoder_shape_and_output_range(relu_before_output):
    torch.manual_seed(0)
    decoder = ResNetReconstructionDecoder(
        16, grid_size=2, image_size=64, out_channels=1, channels=(16, 8, 8, 8), relu_before_output=relu_before_output
    )
    convs = [m for m in decoder.head if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 8, 8, 8, 1]  # 5 stages from 2 to 64 px
    torch.nn.init.constant_(convs[-1].bias, -0.3)  # push the output towards negative values
    out = decoder(torch.randn(3, 4, 16), torch.randn(3, 4, 16))
    assert out.shape == (3, 1, 64, 64)
    if relu_before_output:  # the published decoder cannot produce values below 0
        assert out.min().item() >= 0.0
    else:  # the fixed decoder covers the target range [-1, 1]
        assert out.min().item() < 0.0


def test_official_decoder_output_cannot_go_below_zero():
    torch.manual_seed(0)
    decoder = ResNetReconstructionDecoder(8, 1, 32, channels=(8, 8, 8, 8), relu_before_output=True)
    out = decoder(torch.randn(2, 1, 8), torch.randn(2, 1, 8))
    assert out.min().item() >= 0.0


def vit_decoder(**kwargs):
    torch.manual_seed(0)
    return ViTReconstructionDecoder(
        16, grid_size=2, image_size=32, channels=(8, 8, 8), num_heads=2, num_layers=3, ff_dim=32, dropout=0.0, **kwargs
    ).eval()


def test_vit_decoder_keeps_images_independent_unless_the_published_layout_is_used():
    torch.manual_seed(1)
    image, text = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    changed = image.clone()
    changed[2] += 1.0  # change only the third image
    fixed = vit_decoder()
    assert fixed(image, text).shape == (3, 1, 32, 32)
    torch.testing.assert_close(fixed(image, text)[:2], fixed(changed, text)[:2])
    published = vit_decoder(batch_first=False)
    assert not torch.allclose(published(image, text)[:2], published(changed, text)[:2])


def test_vit_decoder_layer_sharing_switch():
    assert len(vit_decoder().layers) == 3
    shared = vit_decoder(share_layer_weights=True)
    assert len(shared.layers) == 1 and shared.num_layers == 3
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in vit_decoder().parameters())


def test_reconstruction_loss_whole_image_and_masked_regions_by_hand():
    reconstruction = torch.zeros(1, 1, 4, 4)
    image = torch.zeros(1, 1, 4, 4)
    image[..., :2, :2] = 1.0  # error 1 in the top-left quarter only
    token_mask = torch.tensor([[True, False, False, False]])  # 2x2 grid: top-left token masked
    pixel_mask = token_mask_to_pixels(token_mask, 2, (4, 4))
    assert pixel_mask.sum().item() == 4 and pixel_mask[0, 0, :2, :2].sum().item() == 4
    loss, masked = reconstruction_l1_loss(reconstruction, image, 10.0, pixel_mask)
    assert loss.item() == pytest.approx(10 * 4 / 16)
    assert masked.item() == pytest.approx(10.0)
    other = token_mask_to_pixels(torch.tensor([[False, True, True, True]]), 2, (4, 4))
    assert reconstruction_l1_loss(reconstruction, image, 10.0, other)[1].item() == 0.0
