"""EncoderUNet: decoder output shapes (ResNet-18/50, ViT; 224 px and the demo's 96 px), the frozen-encoder invariant,
fine-tuning, input-size errors and encoder weights arriving through the shared encoder loader."""

from __future__ import annotations

import pytest
import torch

from bundle.downstream.encoder_loading import build_downstream_encoder
from bundle.downstream.segmentation_loss import MGCASegmentationLoss
from bundle.downstream.segmentation_network import EncoderUNet, resnet_pyramid, vit_skip_indices
from bundle.networks.image_encoders import build_image_encoder

torch.set_num_threads(1)
SMALL_DECODER = (16, 16, 8, 8, 8)


def tiny_vit(image_size: int):
    return build_image_encoder(
        "vit_b16", 1, image_size, vit_hidden_size=32, vit_mlp_dim=64, vit_num_layers=4, vit_num_heads=2
    )


@pytest.mark.parametrize(
    "name,channels", [("resnet18", [64, 64, 128, 256, 512]), ("resnet50", [64, 256, 512, 1024, 2048])]
)
@pytest.mark.parametrize("side", [224, 96])
def test_resnet_unet_shapes(name, channels, side):
    encoder = build_image_encoder(name, 1, side)
    model = EncoderUNet(encoder, num_classes=2, decoder_channels=SMALL_DECODER).eval()
    image = torch.randn(1, 1, side, side)
    with torch.no_grad():
        pyramid = resnet_pyramid(encoder, image)
        out = model(image)
    assert [f.shape[1] for f in pyramid] == channels
    assert [f.shape[-1] for f in pyramid] == [side // 2, side // 4, side // 8, side // 16, side // 32]
    assert out.shape == (1, 2, side, side)


def test_resnet_unet_non_square_input():
    model = EncoderUNet(build_image_encoder("resnet18", 1, 64), 1, decoder_channels=SMALL_DECODER).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 96)).shape == (2, 1, 64, 96)


@pytest.mark.parametrize("side", [224, 96])
def test_vit_unetr_shapes(side):
    model = EncoderUNet(tiny_vit(side), num_classes=1, vit_feature_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, side, side)).shape == (2, 1, side, side)


def test_vit_skip_blocks():
    assert vit_skip_indices(12) == [2, 5, 8]  # blocks 3, 6, 9 (1-based) and the final tokens, as UNETR
    assert vit_skip_indices(4) == [0, 1, 2]


def test_input_sizes_the_network_cannot_take():
    resnet = EncoderUNet(build_image_encoder("resnet18", 1, 64), 1, decoder_channels=SMALL_DECODER)
    with pytest.raises(ValueError, match="multiples of 32"):
        resnet(torch.randn(1, 1, 72, 64))
    vit = EncoderUNet(tiny_vit(64), 1, vit_feature_size=8)
    with pytest.raises(ValueError, match="built for 64x64"):
        vit(torch.randn(1, 1, 96, 96))
    with pytest.raises(ValueError, match="unknown mode"):
        EncoderUNet(build_image_encoder("resnet18", 1, 64), 1, mode="linear_probe")


def train_steps(model, steps: int = 3, side: int = 64):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    loss_fn = MGCASegmentationLoss()
    model.train()
    for _ in range(steps):
        image = torch.randn(4, 1, side, side)
        target = (image > 0.5).float()
        loss = loss_fn(model(image), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_frozen_encoder_never_moves(kind):
    """Parameters AND batch-norm running statistics of the encoder stay bit-identical through training steps in train
    mode; the decoder does learn; the optimiser holds decoder parameters only."""
    torch.manual_seed(0)
    encoder = build_image_encoder("resnet18", 1, 64) if kind == "resnet" else tiny_vit(64)
    model = EncoderUNet(encoder, 1, mode="frozen", decoder_channels=SMALL_DECODER, vit_feature_size=8)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    assert not any(id(p) in encoder_ids for p in model.trainable_parameters())
    train_steps(model)
    assert model.training and not model.encoder.training
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen encoder tensor changed"
    if kind == "resnet":
        assert any("running_mean" in k for k in before)  # the invariant covers batch-norm statistics
    assert any(not torch.equal(decoder_before[k], v) for k, v in model.decoder.state_dict().items())


def test_fine_tuning_moves_the_encoder():
    torch.manual_seed(0)
    model = EncoderUNet(build_image_encoder("resnet18", 1, 64), 1, mode="fine_tune", decoder_channels=SMALL_DECODER)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train_steps(model, steps=1)
    after = model.encoder.state_dict()
    assert model.encoder.training
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert not torch.equal(before["backbone.bn1.running_mean"], after["backbone.bn1.running_mean"])


def test_cmcgns_weights_reach_the_unet(tmp_path):
    source = build_image_encoder("resnet18", 1, 64)
    path = tmp_path / "image_encoder.pt"
    torch.save(source.state_dict(), path)
    model = EncoderUNet(build_downstream_encoder("cmcgns", path, "resnet18", 1, 64), 1, decoder_channels=SMALL_DECODER)
    for key, value in source.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    with pytest.raises(ValueError, match="not an image encoder of this architecture"):
        build_downstream_encoder("cmcgns", path, "resnet50", 1, 64)
