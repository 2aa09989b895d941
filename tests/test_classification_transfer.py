"""scripts/evaluate_transfer.py: cached features equal the model's own features, the grid's report and plot."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from monai.transforms import Compose
from test_classification_fixtures import ROOT, write_tiny_classification_dataset

from bundle.data.image_io import LoadRadiographd, radiograph_transforms
from bundle.data.manifest import load_manifest
from bundle.downstream.cached_linear_probe import extract_features
from bundle.downstream.classifier import EncoderClassifier
from bundle.downstream.tasks import ClassificationLabeld
from bundle.networks.image_encoders import build_image_encoder

torch.set_num_threads(1)


def _script():
    spec = importlib.util.spec_from_file_location("evaluate_transfer", ROOT / "scripts" / "evaluate_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_validation_items_and_transform(tmp_path):
    """The validation items of a tiny multilabel dataset and the evaluation preprocessing of the probe."""
    manifest = write_tiny_classification_dataset(tmp_path, "multilabel", 3)
    transform = Compose(
        [LoadRadiographd("image")]
        + radiograph_transforms(image_size=36, crop_size=32, train=False)
        + [ClassificationLabeld("multilabel", 3)]
    )
    return load_manifest(manifest, "validation"), transform


def test_cached_features_match_the_model_one_image_at_a_time(tmp_path):
    items, transform = tiny_validation_items_and_transform(tmp_path)
    model = EncoderClassifier(build_image_encoder("resnet18", 1, 32), 3).train()
    cached = extract_features(model, items, transform, batch_size=4)
    assert cached.ids == [item["id"] for item in items]
    for n, item in enumerate(items):  # reference: one image at a time through the classifier's own path
        data = transform(item)
        assert torch.allclose(cached.features[n], model.features(data["image"][None])[0], atol=1e-5)
        assert torch.equal(cached.labels[n], data["label"])


def test_linear_probe_grid_writes_table_and_plot(tmp_path):
    data = tmp_path / "data"
    write_tiny_classification_dataset(data, "multiclass", 3, sizes=(("training", 20), ("validation", 6), ("test", 6)))
    torch.save(build_image_encoder("resnet18", 1, 32).state_dict(), tmp_path / "image_encoder.pt")
    results = tmp_path / "results"
    code = _script().main(
        [
            "--dataset_dir",
            str(data),
            "--dataset",
            "tiny",
            "--task",
            "multiclass",
            "--encoder",
            f"cmcgns=cmcgns:{tmp_path / 'image_encoder.pt'}",
            "--encoder",
            "random",
            "--encoder_name",
            "resnet18",
            "--image_size",
            "36",
            "--crop_size",
            "32",
            "--fractions",
            "0.1",
            "1.0",
            "--seeds",
            "0",
            "1",
            "--max_epochs",
            "3",
            "--results_dir",
            str(results),
        ]
    )
    assert code == 0
    text = (results / "tiny_classification.md").read_text()
    assert "CACHED features" in text
    assert "| cmcgns |" in text and "| random |" in text and "(n=2)" in text
    runs = [line for line in text.splitlines() if line.startswith("| cmcgns | ") or line.startswith("| random | ")]
    assert len(runs) == 2 + 2 + 2 * 2 * 2  # accuracy table, AUROC table, one row per run
    # each fraction trains on exactly its manifest subset (the runs table's training-image column)
    meta = json.loads((data / "manifests" / "classification.json").read_text())["meta"]["fractions"]
    per_run = [r.split("|")[1:5] for r in runs if r.split("|")[2].strip() in ("0.1", "1.0")]
    assert len(per_run) == 8
    for _, fraction, _, n_train in per_run:
        assert int(n_train) == len(meta["0.1"] if fraction.strip() == "0.1" else meta["1.0"]) != 0
    assert len(meta["0.1"]) < len(meta["1.0"]) == 20
    assert (results / "tiny_classification.png").stat().st_size > 1000


def test_fine_tune_grid_runs_the_bundle_config(tmp_path):
    data = tmp_path / "data"
    write_tiny_classification_dataset(data, "binary", 1)
    results = tmp_path / "results"
    code = _script().main(
        [
            "--dataset_dir",
            str(data),
            "--dataset",
            "tiny",
            "--task",
            "binary",
            "--mode",
            "fine_tune",
            "--encoder",
            "random",
            "--encoder_name",
            "resnet18",
            "--image_size",
            "36",
            "--crop_size",
            "32",
            "--fractions",
            "1.0",
            "--seeds",
            "0",
            "--max_epochs",
            "1",
            "--batch_size",
            "4",
            "--results_dir",
            str(results),
            "--work_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    assert (tmp_path / "runs" / "random_1.0_seed0" / "model.pt").is_file()
    text = (results / "tiny_classification.md").read_text()
    assert "CACHED" not in text and "| random | 1.0 | 0 | 12 |" in text


def test_reused_preprocessing_gives_the_same_features_and_transforms_each_image_once(tmp_path):
    items, base = tiny_validation_items_and_transform(tmp_path)
    calls = []

    def transform(item):
        calls.append(item["image"])
        return base(item)

    torch.manual_seed(0)
    first = EncoderClassifier(build_image_encoder("resnet18", 1, 32), 3)
    second = EncoderClassifier(build_image_encoder("resnet18", 1, 32), 3)  # another encoder, as the next cell
    fresh = [extract_features(m, items, base, batch_size=4) for m in (first, second)]
    cache: dict = {}
    reused = [extract_features(m, items, transform, batch_size=4, preprocessed=cache) for m in (first, second)]
    assert sorted(calls) == sorted(item["image"] for item in items)  # once per image over both encoders
    for a, b in zip(fresh, reused):
        assert a.ids == b.ids and torch.equal(a.labels, b.labels)
        assert torch.allclose(a.features, b.features, atol=1e-6)
    assert not torch.allclose(reused[0].features, reused[1].features)  # the cache holds images, not features
    with pytest.raises(ValueError, match="num_workers 0"):
        extract_features(first, items, base, num_workers=2, preprocessed={})
