"""timm / DeiT ViT weights into the bundle's MONAI ViT: every key mapped, the same features as timm's forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bundle.networks.image_encoders import ViTImageEncoder, build_image_encoder
from bundle.networks.vit_weights import resize_position_embedding, timm_vit_to_monai

torch.set_num_threads(1)
WIDTH, HEADS, DEPTH, PATCH, MLP = 32, 4, 2, 8, 64


def timm_state_dict(grid: int, channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with timm's VisionTransformer key layout and shapes (as `vit_*_patch16_224` has)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, WIDTH),
        "pos_embed": r(1, 1 + grid * grid, WIDTH),
        "patch_embed.proj.weight": r(WIDTH, channels, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": r(WIDTH),
        "norm.weight": 1 + r(WIDTH),
        "norm.bias": r(WIDTH),
        "head.weight": r(1000, WIDTH),
        "head.bias": r(1000),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(WIDTH),
            p + "norm1.bias": r(WIDTH),
            p + "attn.qkv.weight": r(3 * WIDTH, WIDTH),
            p + "attn.qkv.bias": r(3 * WIDTH),
            p + "attn.proj.weight": r(WIDTH, WIDTH),
            p + "attn.proj.bias": r(WIDTH),
            p + "norm2.weight": 1 + r(WIDTH),
            p + "norm2.bias": r(WIDTH),
            p + "mlp.fc1.weight": r(MLP, WIDTH),
            p + "mlp.fc1.bias": r(MLP),
            p + "mlp.fc2.weight": r(WIDTH, MLP),
            p + "mlp.fc2.bias": r(WIDTH),
        }
    return sd


def timm_forward(sd: dict, image: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """timm's VisionTransformer.forward_features written out (pre-norm blocks, CLS + pos_embed), [B, 1 + N, F]."""
    x = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    b, n, _ = x.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(WIDTH // HEADS)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, WIDTH)
        x = x + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (WIDTH,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), *_fc2(sd, p))
        x = x + h
    return F.layer_norm(x, (WIDTH,), sd["norm.weight"], sd["norm.bias"], eps)


def _fc2(sd, p):
    return sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"]


def encoder(image_size: int, channels: int, weights=None) -> ViTImageEncoder:
    return ViTImageEncoder(channels, image_size, PATCH, WIDTH, MLP, DEPTH, HEADS, pretrained_weights=weights)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_timm_weights_give_timm_features_for_rgb_and_grey_images(prefix):
    sd = timm_state_dict(grid=4)
    image = torch.rand(2, 1, 32, 32) * 2 - 1
    reference = timm_forward(sd, image.repeat(1, 3, 1, 1))  # a grey image as RGB through the RGB weights
    grey = encoder(32, 1, {prefix + k: v for k, v in sd.items()}).eval()
    local, global_ = grey(image)
    torch.testing.assert_close(global_, reference[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(local, reference[:, 1:], atol=1e-4, rtol=1e-4)
    rgb = encoder(32, 3, sd).eval()
    torch.testing.assert_close(rgb(image.repeat(1, 3, 1, 1))[1], reference[:, 0], atol=1e-4, rtol=1e-4)


def test_positional_embedding_is_interpolated_for_another_grid():
    sd = timm_state_dict(grid=4)
    model = encoder(48, 1, sd)  # 6 x 6 patches from a 4 x 4 checkpoint
    loaded = model.backbone.patch_embedding.position_embeddings
    assert loaded.shape == (1, 36, WIDTH)
    grid = sd["pos_embed"][:, 1:].reshape(1, 4, 4, WIDTH).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(loaded.detach(), expected.reshape(1, 36, WIDTH))
    assert torch.equal(resize_position_embedding(sd["pos_embed"][:, 1:], 4), sd["pos_embed"][:, 1:])
    torch.testing.assert_close(model.backbone.cls_token.detach(), sd["cls_token"] + sd["pos_embed"][:, :1])


def test_foreign_distilled_and_mismatching_weights_are_refused(tmp_path):
    sd = timm_state_dict(grid=4)
    with pytest.raises(KeyError, match="blocks.0.attn.weird"):
        timm_vit_to_monai(sd | {"blocks.0.attn.weird.weight": torch.zeros(1)}, 1, 4)
    with pytest.raises(ValueError, match="distilled"):
        timm_vit_to_monai(sd | {"dist_token": torch.zeros(1, 1, WIDTH)}, 1, 4)
    with pytest.raises(KeyError, match="pos_embed"):
        timm_vit_to_monai({k: v for k, v in sd.items() if k != "pos_embed"}, 1, 4)
    with pytest.raises(ValueError, match="missing \\['blocks.2"):  # a 2-block checkpoint into a 3-block ViT
        ViTImageEncoder(1, 32, PATCH, WIDTH, MLP, DEPTH + 1, HEADS, pretrained_weights=sd)
    path = tmp_path / "deit.pth"
    torch.save({"model": sd}, path)  # DeiT's release format
    model = build_image_encoder("vit_b16", 1, 32, vit_patch_size=PATCH, vit_hidden_size=WIDTH, vit_mlp_dim=MLP,
                                vit_num_layers=DEPTH, vit_num_heads=HEADS, pretrained_weights=str(path))  # fmt: skip
    assert torch.equal(model.backbone.norm.weight.detach(), sd["norm.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        encoder(32, 1, str(tmp_path / "missing.pth"))
