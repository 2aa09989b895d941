"""Encoder sources (CM-CGNS image_encoder.pt / model.pt, torchvision ResNet, random); the frozen-encoder invariant."""

from __future__ import annotations

import pytest
import torch

from bundle.downstream.classifier import EncoderClassifier
from bundle.downstream.encoder_loading import build_downstream_encoder
from bundle.networks.image_encoders import build_image_encoder

torch.set_num_threads(1)


def _perturbed(module):
    torch.manual_seed(7)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return module


def _equal_states(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cmcgns_encoder_from_image_encoder_pt_and_model_pt(tmp_path):
    source = _perturbed(build_image_encoder("resnet18", 1, 32))
    torch.save(source.state_dict(), tmp_path / "image_encoder.pt")
    # a pretraining model.pt: the encoder under "image_encoder." among other modules' keys
    model_state = {f"image_encoder.{k}": v for k, v in source.state_dict().items()}
    model_state["text_encoder.weight"] = torch.zeros(3)
    torch.save(model_state, tmp_path / "model.pt")
    for name in ("image_encoder.pt", "model.pt"):
        encoder = build_downstream_encoder("cmcgns", tmp_path / name, "resnet18", 1, 32)
        assert _equal_states(encoder, source), name


def test_cmcgns_encoder_of_the_wrong_architecture_fails_naming_the_file(tmp_path):
    torch.save(build_image_encoder("resnet18", 1, 32).state_dict(), tmp_path / "image_encoder.pt")
    with pytest.raises(ValueError, match="image_encoder.pt: not an image encoder of this architecture"):
        build_downstream_encoder("cmcgns", tmp_path / "image_encoder.pt", "resnet50", 1, 32)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_downstream_encoder("cmcgns", tmp_path / "missing.pt", "resnet18", 1, 32)


def test_imagenet_torchvision_weights_and_random_sources(tmp_path):
    reference = _perturbed(build_image_encoder("resnet18", 3, 32)).backbone
    # torchvision layout: the MONAI ResNet's keys are torchvision's; add the classifier torchvision files carry
    state = {k: v for k, v in reference.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18-imagenet.pth")
    encoder = build_downstream_encoder("imagenet", tmp_path / "resnet18-imagenet.pth", "resnet18", 1, 32)
    # one input channel: conv1 summed over RGB, every other tensor as in the file
    assert torch.allclose(encoder.backbone.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(encoder.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    random_a = build_downstream_encoder("random", None, "resnet18", 1, 32)
    assert not torch.equal(random_a.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match="unknown encoder source"):
        build_downstream_encoder("scratch", None, "resnet18", 1, 32)


def test_linear_probe_keeps_the_encoder_frozen_in_eval_mode():
    encoder = build_image_encoder("resnet18", 1, 32)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = EncoderClassifier(encoder, num_classes=3, mode="linear_probe")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    assert {id(p) for p in model.trainable_parameters()} == {id(model.head.weight), id(model.head.bias)}
    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in encoder.modules())
    image = torch.randn(4, 1, 32, 32) * 3 + 1  # statistics far from BN's running ones: train mode would move them
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(image), torch.ones(4, 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean/var, num_batches_tracked, weights
    assert model.features(image).grad_fn is None  # no graph through the encoder
    # the features are the globally average-pooled last feature map (reference: a plain mean)
    expected = encoder.forward_features(image).mean(dim=(2, 3))
    assert torch.allclose(model.features(image), expected)


def test_fine_tune_trains_the_encoder_and_global_pooling_uses_the_pool():
    encoder = build_image_encoder("resnet18", 1, 32)
    model = EncoderClassifier(encoder, num_classes=2, mode="fine_tune", pooling="global").train()
    assert encoder.training
    running = encoder.backbone.bn1.running_mean.clone()
    model(torch.randn(4, 1, 32, 32) + 1).sum().backward()
    assert not torch.equal(running, encoder.backbone.bn1.running_mean)
    assert encoder.backbone.conv1.weight.grad is not None
    assert encoder.attention_pool is not None and any(p.grad is not None for p in encoder.attention_pool.parameters())


def test_vit_encoder_avg_and_cls_pooling():
    encoder = build_downstream_encoder(
        "random",
        None,
        "vit_b16",
        1,
        32,
        vit_patch_size=16,
        vit_hidden_size=32,
        vit_mlp_dim=64,
        vit_num_layers=1,
        vit_num_heads=2,
    )
    image = torch.randn(2, 1, 32, 32)
    avg = EncoderClassifier(encoder, num_classes=3, pooling="avg").train()
    local, cls = encoder(image)
    assert torch.allclose(avg.features(image), local.mean(1), atol=1e-6)  # mean over the 4 patch tokens
    glob = EncoderClassifier(encoder, num_classes=3, pooling="global")
    assert torch.allclose(glob.features(image), cls, atol=1e-6)
    assert avg(image).shape == (2, 3) and not encoder.training
