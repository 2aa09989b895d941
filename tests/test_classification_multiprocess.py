"""The documented torchrun command with configs/multi_gpu_classification.yaml, as two CPU processes (gloo): training,
the best checkpoint written by rank 0 and read by both ranks only after it is complete (barrier + atomic save; rank 1
used to read it half-written, EOFError), and one predictions.csv holding every test item once."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from test_classification_fixtures import CONFIGS, ROOT, tiny_overrides, write_tiny_classification_dataset
from torchrun_bundle import torchrun_bundle


@pytest.mark.slow
def test_two_gloo_processes_train_and_test_a_classifier(tmp_path):
    data = tmp_path / "data"
    manifest = write_tiny_classification_dataset(data, "multilabel", 3)
    out = tmp_path / "run"
    override = tmp_path / "tiny.yaml"
    override.write_text(yaml.safe_dump(tiny_overrides(data, out, max_epochs=1, batch_size=2)))
    torchrun_bundle(CONFIGS + [ROOT / "configs" / "multi_gpu_classification.yaml", override])

    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["downstream_meta"] == {"task": "multilabel", "class_names": ["finding_0", "finding_1", "finding_2"]}
    with open(out / "test" / "predictions.csv", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["id", "image", "finding_0", "finding_1", "finding_2"]
    # 6 test items split 3 + 3 over the ranks without padding, gathered into one file by rank 0
    assert [r[0] for r in rows] == sorted(item["id"] for item in json.loads(manifest.read_text())["test"])
    assert (out / "test" / "metrics.csv").is_file()
    assert not [name for name in os.listdir(out) if ".tmp." in name]
