"""configs/classification.yaml end to end with ConfigWorkflow on tiny PNG data: one run per task type, the fraction
subsets it trains on, best checkpoint, MetricsSaver and ClassificationSaver outputs, and the evaluate override."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from monai.bundle import ConfigWorkflow
from test_classification_fixtures import CONFIGS, LOGGING, META, ROOT, tiny_overrides, write_tiny_classification_dataset

torch.set_num_threads(1)
EVALUATE = str(ROOT / "configs" / "evaluate_classification.yaml")


def workflow(config_files, workflow_type="train", **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=config_files, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
    )
    wf.initialize()
    return wf


def read_metrics(path) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(",", 1) for line in f if line.strip())


@pytest.mark.parametrize("task,num_classes", [("multilabel", 3), ("binary", 1), ("multiclass", 3)])
def test_train_validate_test_per_task(tmp_path, task, num_classes):
    data = tmp_path / "data"
    manifest = write_tiny_classification_dataset(data, task, num_classes)
    out = tmp_path / "run"
    wf = workflow(CONFIGS, **tiny_overrides(data, out, task=task))
    assert wf.check_properties() in (None, [])
    wf.run()
    wf.finalize()
    assert (out / "model.pt").is_file()
    metrics = read_metrics(out / "test" / "metrics.csv")
    key = "test_accuracy" if task == "multiclass" else "test_auroc"
    assert 0.0 <= float(metrics[key]) <= 1.0
    if task == "multilabel":
        assert {f"test_auroc/finding_{c}" for c in range(3)} <= set(metrics)
    with open(out / "test" / "predictions.csv", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    test_items = json.loads(manifest.read_text())["test"]
    names = ["pneumonia"] if task == "binary" else [f"finding_{c}" for c in range(3)]
    assert header == ["id", "image"] + names
    # one row per test item, keyed (and sorted) by the manifest id, with its image path
    assert [r[0] for r in rows] == sorted(item["id"] for item in test_items)
    assert all(r[1].endswith(f"images/{r[0]}.png") and len(r) == 2 + num_classes for r in rows)
    probs = torch.tensor([[float(v) for v in r[2:]] for r in rows])
    assert ((probs >= 0) & (probs <= 1)).all()
    if task == "multiclass":
        assert torch.allclose(probs.sum(1), torch.ones(len(rows)), atol=1e-5)


def test_data_fraction_selects_the_manifest_subset(tmp_path):
    data = tmp_path / "data"
    manifest = json.loads(
        write_tiny_classification_dataset(data, sizes=(("training", 30), ("validation", 4), ("test", 4))).read_text()
    )
    sizes = {}
    for fraction in ("0.1", "1.0"):
        wf = ConfigWorkflow(
            config_file=CONFIGS,
            meta_file=META,
            logging_file=LOGGING,
            workflow_type="train",
            **tiny_overrides(data, tmp_path / "run", data_fraction=float(fraction)),
        )
        ids = [item["id"] for item in wf.parser.get_parsed_content("train#datalist")]
        assert ids == manifest["meta"]["fractions"][fraction]
        sizes[fraction] = ids
    assert set(sizes["0.1"]) < set(sizes["1.0"]) and len(sizes["1.0"]) == 30


def test_evaluate_override_uses_the_saved_checkpoint(tmp_path):
    data = tmp_path / "data"
    write_tiny_classification_dataset(data, "binary", 1)
    out = tmp_path / "run"
    train = workflow(CONFIGS, **tiny_overrides(data, out, task="binary", max_epochs=1))
    train.run()
    eval_dir = tmp_path / "eval"
    evaluate = workflow(
        CONFIGS + [EVALUATE],
        workflow_type="infer",
        **tiny_overrides(data, out, task="binary", eval_dir=str(eval_dir), test_split="validation"),
    )
    evaluate.run()
    assert 0.0 <= float(read_metrics(eval_dir / "metrics.csv")["test_auroc"]) <= 1.0
    with open(eval_dir / "predictions.csv", encoding="utf-8") as f:
        assert len(list(csv.reader(f))) == 1 + 6  # header + the validation split


def test_early_stopping_ends_training_when_the_key_metric_stops_improving(tmp_path):
    data = tmp_path / "data"
    write_tiny_classification_dataset(data, "binary", 1)
    # learning rate 0: the validation AUROC never improves after the first validation
    wf = workflow(
        CONFIGS,
        **tiny_overrides(data, tmp_path / "run", task="binary", max_epochs=6, learning_rate=0.0, early_stop_patience=2),
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.epoch == 3
