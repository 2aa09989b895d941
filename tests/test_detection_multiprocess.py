"""The documented torchrun command with configs/multi_gpu_detection.yaml, as two CPU processes (gloo): training with
the detector in DistributedDataParallel, rank 0 writing model.pt and metrics.csv, each rank writing the predictions of
its share of the test split, every test image predicted exactly once."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from test_detection_fixtures import ROOT, write_tiny_detection_dataset
from torchrun_bundle import torchrun_bundle

from bundle.networks.image_encoders import build_image_encoder


@pytest.mark.slow
def test_two_gloo_processes_train_and_test_a_detector(tmp_path):
    data = tmp_path / "data"
    manifest = write_tiny_detection_dataset(data)
    torch.save(build_image_encoder("resnet18", 1, 64).state_dict(), tmp_path / "image_encoder.pt")
    out = tmp_path / "run"
    settings = dict(
        bundle_root=str(ROOT),
        dataset_dir=str(data),
        encoder_name="resnet18",
        encoder_image_size=64,
        encoder_weights=str(tmp_path / "image_encoder.pt"),
        detection_image_size=64,
        fpn_channels=8,
        batch_size=2,
        num_workers=0,
        max_epochs=2,
        output_dir=str(out),
    )
    override = tmp_path / "tiny.yaml"
    override.write_text(yaml.safe_dump(settings))
    torchrun_bundle(
        [ROOT / "configs" / f for f in ("common.yaml", "detection.yaml", "multi_gpu_detection.yaml")] + [override],
        timeout=600,
    )

    assert (out / "model.pt").is_file() and not [n for n in os.listdir(out) if ".tmp." in n]
    metrics = dict(line.split(",") for line in (out / "test" / "metrics.csv").read_text().split())
    assert set(metrics) == {"test_mAP_40_75", "test_mAP_50", "test_mAP_50_95"}
    ranks = [json.loads((out / "test" / f"predictions_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(ranks)  # both ranks evaluated a share
    ids = sorted(rec["id"] for share in ranks for rec in share)
    assert ids == sorted(item["id"] for item in json.loads(manifest.read_text())["test"])  # each exactly once
