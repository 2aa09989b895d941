"""scripts/evaluate_joint_space.py's per-cell cache and scripts/ablate.py's grounding column: a cached summary is
reused only for the same checkpoint file and network settings, and a variant's network overrides (softmax
attention) reach the evaluated network."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def joint():
    return load("evaluate_joint_space")


class WorkflowCalled(Exception):
    """Raised by the stand-in workflow: the cell is evaluated again, with these overrides."""

    def __init__(self, overrides: dict):
        super().__init__("workflow built")
        self.overrides = overrides


def raise_on_workflow(configs, overrides):
    raise WorkflowCalled(dict(overrides))


def cached_cell(joint, tmp_path: Path, overrides: dict) -> tuple[Path, SimpleNamespace]:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights of one cell")
    args = SimpleNamespace(dataset_dir=str(tmp_path), work_dir=str(tmp_path / "js"), recompute=False)
    out = tmp_path / "js" / "f_full_seed0"
    out.mkdir(parents=True)
    summary = {"label": "f_full_seed0", "model_token_pointing": 0.5}
    summary["identity"] = joint.checkpoint_identity(checkpoint, 0, overrides)
    (out / "summary.json").write_text(json.dumps(summary))
    return checkpoint, args


def test_a_summary_is_reused_for_the_same_checkpoint_and_settings(joint, tmp_path, monkeypatch):
    overrides = {"network_def#cross_attention_normalisation": "softmax"}
    checkpoint, args = cached_cell(joint, tmp_path, overrides)
    monkeypatch.setattr(joint, "workflow", raise_on_workflow)
    assert joint.evaluate("f_full_seed0", checkpoint, [], 0, args, dict(overrides))["model_token_pointing"] == 0.5


def test_a_retrained_checkpoint_under_the_same_label_is_evaluated_again(joint, tmp_path, monkeypatch):
    checkpoint, args = cached_cell(joint, tmp_path, {})
    monkeypatch.setattr(joint, "workflow", raise_on_workflow)
    checkpoint.write_bytes(b"weights of a new run of the cell")  # another size
    with pytest.raises(WorkflowCalled):
        joint.evaluate("f_full_seed0", checkpoint, [], 0, args)
    checkpoint.write_bytes(b"weights of one cell")  # the old size, a newer file
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(WorkflowCalled):
        joint.evaluate("f_full_seed0", checkpoint, [], 0, args)


def test_a_summary_of_other_network_settings_is_evaluated_again(joint, tmp_path, monkeypatch):
    checkpoint, args = cached_cell(joint, tmp_path, {})  # cached with the default (sigmoid) attention
    monkeypatch.setattr(joint, "workflow", raise_on_workflow)
    softmax = {"network_def#cross_attention_normalisation": "softmax"}
    with pytest.raises(WorkflowCalled) as called:
        joint.evaluate("f_full_seed0", checkpoint, [], 0, args, softmax)
    assert called.value.overrides["network_def#cross_attention_normalisation"] == "softmax"
    assert called.value.overrides["eval_checkpoint"] == str(checkpoint)


def test_random_init_cells_are_keyed_by_their_seed(joint):
    assert joint.checkpoint_identity(None, 0, {}) != joint.checkpoint_identity(None, 1, {})


def test_the_ablation_passes_each_variants_network_overrides(joint):
    ablate = load("ablate")
    total = 4
    softmax = ablate.parsed_overrides("i_softmax", total)
    assert softmax == {"network_def#cross_attention_normalisation": "softmax"}
    b = ablate.parsed_overrides("b_global", total)
    assert b["network_def#weight_img"] == 0.0 and b["network_def#weight_report"] == 0.0  # numbers, not strings
    assert (b["stage1_epochs"], b["stage2_epochs"]) == (4, 0)
    assert ablate.parsed_overrides("f_full", total) == {}


def test_a_summary_of_other_workflows_is_not_reused(joint):
    grounding_only = ("evaluate_zero_shot.yaml", "evaluate_grounding.yaml")  # what the ablation's column runs
    assert joint.checkpoint_identity(None, 0, {}, grounding_only) != joint.checkpoint_identity(None, 0, {})
