"""scripts/export_bundle.py: each task exports a standalone bundle that passes the model-zoo checks, whose
TorchScript and ONNX models reproduce PyTorch, whose code runs without this repository on sys.path, and whose
configs keep MONAI Label's train / infer contract; mismatching checkpoints fail naming the keys or classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_fixtures import LABELS, settings, tiny_checkpoints
from monai.bundle import ConfigParser

from bundle.export.bundle_path import exported_bundle_on_path
from bundle.export.checkpoint_check import ExportMismatchError
from bundle.export.checks import verify_exported
from bundle.export.exporter import export_bundle

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("segmentation", "classification", "detection")
EXPECTED_FILES = [
    "configs/metadata.json",
    "configs/inference.yaml",
    "configs/train.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/logging.conf",
    "models/model.pt",
    "models/model.ts",
    "models/model.onnx",
    "docs/README.md",
    "LICENSE",
    "scripts/__init__.py",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    results = {}
    for task in TASKS:
        s = settings(task)
        s.onnx = True
        results[task] = export_bundle(s, checkpoints[task], out)
    return results


def _net(bundle_dir: Path, net_id: str):
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle_dir)
    with exported_bundle_on_path(bundle_dir):
        net = parser.get_parsed_content(net_id, instantiate=True)
    state = torch.load(bundle_dir / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    if net_id == "head_outputs":
        state = {f"network.{k}": v for k, v in state.items()}
    net.load_state_dict(state)
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_export_writes_a_bundle_that_passes_the_model_zoo_checks(exported, task):
    result = exported[task]
    bundle_dir = result["path"]
    assert bundle_dir.name == f"cxr_demo_{task}"  # MONAI Label takes the task type from the folder name
    for name in EXPECTED_FILES:
        assert (bundle_dir / name).is_file(), name
    checks = verify_exported(bundle_dir, result["net_id"])
    assert list(checks) == ["verify_metadata", "verify_net_in_out", "check_properties train", "check_properties infer"]
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [v for v in channel_def.values() if v != "background"]
    assert names == LABELS[task]
    for path in list((bundle_dir / "configs").glob("*.yaml")) + list((bundle_dir / "scripts").rglob("*.py")):
        text = path.read_text()
        assert "from bundle." not in text and "_target_: bundle." not in text and "import bundle." not in text, path


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_torchscript_and_onnx_equal_pytorch_on_new_inputs(exported, task):
    import onnxruntime

    result = exported[task]
    bundle_dir, side = result["path"], 64
    net = _net(bundle_dir, result["net_id"])
    x = torch.linspace(-1, 1, 2 * side * side).reshape(2, 1, side, side)  # batch 2: not the traced batch of 1
    x = x.flip(-1) * torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = net(x)
        scripted = torch.jit.load(str(bundle_dir / "models" / "model.ts"))(x)
    torch.testing.assert_close(scripted, expected, atol=1e-4, rtol=1e-4)
    session = onnxruntime.InferenceSession(
        str(bundle_dir / "models" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx_out = [session.run(None, {session.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(2)]
    np.testing.assert_allclose(np.concatenate(onnx_out), expected.numpy(), atol=1e-3, rtol=1e-3)
    if task == "detection":
        anchors = 9 * sum((side // s) ** 2 for s in (8, 16, 32))
        assert expected.shape == (2, len(LABELS[task]) + 4, anchors)


@pytest.mark.slow
def test_exported_code_runs_without_the_repository(exported):
    """The bundle's network and transforms build with only the bundle folder on sys.path (MONAI Label's view)."""
    bundle_dir = exported["segmentation"]["path"]
    code = (
        "import sys; from monai.bundle import ConfigParser; p = ConfigParser(); "
        "p.read_config('configs/inference.yaml'); p['bundle_root'] = '.'; "
        "net = p.get_parsed_content('network_def'); pre = p.get_parsed_content('preprocessing'); "
        "assert 'bundle' not in sys.modules and not any(m.startswith('bundle.') for m in sys.modules); "
        "print(type(net).__module__, len(pre.transforms))"
    )
    env = dict(os.environ, PYTHONPATH=str(bundle_dir))
    done = subprocess.run([sys.executable, "-c", code], cwd=bundle_dir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "scripts.downstream.segmentation_network"


@pytest.mark.slow
def test_train_config_keeps_monai_labels_train_contract(exported):
    bundle_dir = exported["segmentation"]["path"]
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
    for key in ("bundle_root", "device", "network", "network_def", "train#handlers", "train#trainer#max_epochs"):
        assert key in parser, key
    assert isinstance(parser["train#handlers"], list)  # BundleTrainTask inserts its CheckpointLoader there
    assert parser["train#dataset#data"] == "@train#datalist" and "validate#dataset#data" in parser
    assert parser["output_dir"] == "$@ckpt_dir" and parser["ckpt_dir"] == "$@bundle_root + '/models'"
    # BundleTrainTask runs `run` without `initialize`: the early-stopping hook must be in `run`
    assert any("early_stop.set_trainer" in step for step in parser["run"])
    assert "test" not in parser and "manifest_meta" not in parser


def test_checkpoint_of_another_architecture_is_refused_naming_keys(checkpoints, tmp_path):
    s = settings("segmentation")
    s.decoder_channels = [32, 16, 8, 8, 8]  # the checkpoint's first decoder block is 16 wide
    with pytest.raises(
        ExportMismatchError,
        match=r"decoder\.decoder\.blocks\.0\.convs\.conv_0\.conv\.weight \(16, 768, 3, 3\) vs \(32, 768, 3, 3\)",
    ):
        export_bundle(s, checkpoints["segmentation"], tmp_path)


def test_checkpoint_with_another_number_of_classes_is_refused_naming_the_classes(checkpoints, tmp_path):
    s = settings("segmentation")
    s.labels = ["effusion", "pneumothorax"]  # the checkpoint has one output channel
    with pytest.raises(
        ExportMismatchError,
        match=r"decoder\.head\.0\.weight \(1, 8, 3, 3\) vs \(2, 8, 3, 3\).*class\(es\) \['effusion', 'pneumothorax'\]",
    ):
        export_bundle(s, checkpoints["segmentation"], tmp_path)
    d = settings("detection")
    d.labels = ["opacity"]
    with pytest.raises(ExportMismatchError, match=r"classification_head\.cls_logits\.weight"):
        export_bundle(d, checkpoints["detection"], tmp_path)


def test_classification_checkpoint_with_other_classes_or_task_is_refused(checkpoints, tmp_path):
    s = settings("classification")
    s.labels = ["opacity", "effusion"]
    with pytest.raises(ExportMismatchError, match=r"\['effusion', 'opacity'\].*another order"):
        export_bundle(s, checkpoints["classification"], tmp_path)
    s.labels = ["effusion", "nodule"]
    with pytest.raises(
        ExportMismatchError, match=r"not in the export: \['opacity'\]; not in the checkpoint: \['nodule'\]"
    ):
        export_bundle(s, checkpoints["classification"], tmp_path)
    s.labels, s.classification_task = list(LABELS["classification"]), "multiclass"
    with pytest.raises(ExportMismatchError, match="'multilabel' task, the export is 'multiclass'"):
        export_bundle(s, checkpoints["classification"], tmp_path)
