"""configs/inference.yaml: embeddings equal the encoder's own outputs, metadata's output channels are checked by
monai.bundle verify_net_in_out, and a checkpoint for another encoder is refused by name."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from PIL import Image
from test_pretrain_fixtures import ROOT

from bundle.data.image_io import LoadRadiographd, radiograph_transforms
from bundle.downstream.image_embedding import load_image_encoder
from bundle.networks.image_encoders import build_image_encoder

torch.set_num_threads(1)
CONFIG, META = str(ROOT / "configs" / "inference.yaml"), str(ROOT / "metadata.json")


def test_metadata_output_channels_are_those_of_the_default_encoder_and_checked():
    verify_net_in_out(net_id="image_embedding", config_file=CONFIG, meta_file=META)  # ResNet-50: 2048
    with pytest.raises(ValueError, match="512"):
        verify_net_in_out(net_id="image_embedding", config_file=CONFIG, meta_file=META, image_encoder="resnet18")


def test_folder_embeddings_equal_the_encoder_on_the_same_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name, shape in (("b.png", (40, 52)), ("a.png", (48, 36)), ("sub/c.png", (44, 44))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images / name)
    torch.manual_seed(0)
    encoder = build_image_encoder("resnet18", 1, 32)
    torch.save(encoder.state_dict(), tmp_path / "image_encoder.pt")
    parser = ConfigParser()
    parser.read_config(CONFIG)
    settings = dict(checkpoint=str(tmp_path / "image_encoder.pt"), input_dir=str(images),
                    output_dir=str(tmp_path / "out"), image_encoder="resnet18", image_size=40, crop_size=32,
                    batch_size=2, num_workers=0, device="cpu")  # fmt: skip
    for key, value in settings.items():
        parser[key] = value
    parser.get_parsed_content("run")
    out = torch.load(tmp_path / "out" / "embeddings.pt", weights_only=True)
    assert out["ids"] == ["a.png", "b.png", "sub/c.png"]
    assert out["image_global"].shape == (3, 512) and out["image_tokens"].shape == (3, 1, 512)
    transforms = [LoadRadiographd(keys="image")] + radiograph_transforms(image_size=40, crop_size=32, train=False)
    encoder.eval()
    for row, name in enumerate(out["ids"]):
        data = {"image": str(images / name)}
        for t in transforms:
            data = t(data)
        with torch.no_grad():
            local, global_ = encoder(data["image"].as_tensor().unsqueeze(0))
        torch.testing.assert_close(out["image_global"][row], global_[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["image_tokens"][row], local[0], atol=1e-5, rtol=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "out" / "embeddings.csv")))
    assert [r["id"] for r in rows] == out["ids"] and rows[2]["file"].endswith("sub/c.png")


def test_a_checkpoint_of_another_encoder_is_refused_naming_it(tmp_path):
    torch.save(build_image_encoder("resnet18", 1, 32).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="r18.pt does not fit"):
        load_image_encoder(build_image_encoder("vit_b16", 1, 32, vit_hidden_size=32, vit_mlp_dim=64,
                                               vit_num_layers=1, vit_num_heads=2), tmp_path / "r18.pt")  # fmt: skip
