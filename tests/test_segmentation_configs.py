"""configs/segmentation.yaml (+ evaluate / inference overrides) end to end with ConfigWorkflow on tiny PNG data, and
the `evaluate_transfer.py --task segmentation` grid on the same data."""

from __future__ import annotations

import json

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image
from test_segmentation_fixtures import CONFIGS, LOGGING, META, ROOT, tiny_overrides, write_tiny_segmentation_dataset

torch.set_num_threads(1)
EVALUATE = str(ROOT / "configs" / "evaluate_segmentation.yaml")
INFERENCE = [str(ROOT / "configs" / "common.yaml"), str(ROOT / "configs" / "inference_segmentation.yaml")]


def workflow(config_files, workflow_type="train", **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=config_files, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
    )
    wf.initialize()
    return wf


def read_metrics(path) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        return {k: float(v) for k, v in (line.rstrip("\n").split(",", 1) for line in f if line.strip())}


def test_train_evaluate_infer(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    manifest = json.loads(write_tiny_segmentation_dataset(data).read_text())
    wf = workflow(CONFIGS, **tiny_overrides(data, out))
    assert wf.check_properties() in (None, [])
    wf.run()
    wf.finalize()
    assert (out / "model.pt").is_file()
    metrics = read_metrics(out / "test" / "metrics.csv")
    assert {"test_mgca_dice", "test_mean_dice", "test_pooled_dice"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test_mgca_dice", "test_mean_dice", "test_pooled_dice"))
    # one predicted mask per test image, at the stored image's size (40 x 48), holding class ids 0 / 1
    names = sorted(p.name for p in (out / "test" / "masks").iterdir())
    assert names == sorted(f"{it['id']}_seg.png" for it in manifest["test"])
    test_masks = {n: np.asarray(Image.open(out / "test" / "masks" / n)) for n in names}
    assert all(m.shape == (40, 48) and set(np.unique(m)) <= {0, 1} for m in test_masks.values())

    # evaluate override: same checkpoint, validation split, its own folder
    ev = workflow(CONFIGS + [EVALUATE], "eval", **tiny_overrides(data, out, test_split="validation"))
    assert ev.check_properties() in (None, [])
    ev.run()
    assert set(read_metrics(out / "eval" / "metrics.csv")) >= {"test_mgca_dice", "test_pooled_dice"}
    assert len(list((out / "eval" / "masks").iterdir())) == len(manifest["validation"])

    # inference on a folder of images: the same masks as the test run wrote, at the original size
    inf = workflow(
        INFERENCE,
        "infer",
        image_path=str(data / "images"),
        checkpoint=str(out / "model.pt"),
        output_dir=str(tmp_path / "inference"),
        encoder_name="resnet18",
        encoder_image_size=32,
        decoder_channels=[16, 16, 8, 8, 8],
        image_size=48,
        device="cpu",
        bundle_root=str(ROOT),
    )
    assert inf.check_properties() in (None, [])
    inf.run()
    for name, mask in test_masks.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "inference" / name)), mask)
    last = inf.evaluator.state.output[0]["pred"]
    # SqueezeDimd, then x first: MONAI Label's writer transposes the 2D label it is handed back to rows x columns
    assert last.shape == (48, 40)


def test_grid_runner_writes_tables_and_plots(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import evaluate_transfer

    data = tmp_path / "data"
    write_tiny_segmentation_dataset(data, sizes=(("training", 10), ("validation", 4), ("test", 4)))
    results = tmp_path / "results"
    assert (
        evaluate_transfer.main(
            [
                "--task",
                "segmentation",
                "--dataset_dir",
                str(data),
                "--dataset",
                "tiny",
                "--encoder",
                "random=random",
                "--encoder_name",
                "resnet18",
                "--encoder_image_size",
                "32",
                "--image_size",
                "48",
                "--crop_size",
                "32",
                "--decoder_channels",
                "16",
                "16",
                "8",
                "8",
                "8",
                "--fractions",
                "0.1",
                "1.0",
                "--seeds",
                "0",
                "1",
                "--fraction_epochs",
                "0.1:1,1.0:2",
                "--batch_size",
                "4",
                "--val_batch_size",
                "4",
                "--overlay_count",
                "2",
                "--results_dir",
                str(results),
                "--work_dir",
                str(tmp_path / "grid"),
            ]
        )
        == 0
    )
    text = (results / "tiny_segmentation.md").read_text()
    assert "| random | " in text and "MGCA Dice" in text and "pooled Dice" in text
    rows = [
        line for line in text.splitlines() if line.startswith("| random | 0.1 |") or line.startswith("| random | 1.0 |")
    ]
    assert len(rows) == 4
    assert [int(r.split("|")[4]) for r in rows] == [1, 1, 10, 10]  # training images: 10% of 10 -> 1, all
    assert [int(r.split("|")[10]) for r in rows] == [1, 1, 2, 2]  # epochs per fraction
    for name in ("tiny_segmentation.png", "tiny_segmentation_overlay.png"):
        assert (results / name).stat().st_size > 1000
