"""scripts/dry_run.py: real steps on real data without writing anything, a projection that follows from the measured
step, and preflight failures that name the file."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_pretrain_fixtures import ROOT, tiny_dataset, tiny_overrides, tiny_text_model, write_override_file  # noqa: F401


@pytest.fixture(scope="module")
def dry_run():
    spec = importlib.util.spec_from_file_location("dry_run", ROOT / "scripts" / "dry_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configs(tmp_path, tiny_dataset, tiny_text_model, **extra):  # noqa: F811
    overrides = tiny_overrides(tiny_dataset, tiny_text_model, tmp_path / "run") | extra
    override = write_override_file(tmp_path / "tiny.yaml", overrides)
    return str([str(ROOT / "configs" / "pretrain.yaml"), str(override)])


def test_dry_run_measures_both_stages_and_writes_nothing(dry_run, tmp_path, tiny_dataset, tiny_text_model):  # noqa: F811
    out = tmp_path / "report.json"
    code = dry_run.main(
        ["--config_file", configs(tmp_path, tiny_dataset, tiny_text_model, stage2_epochs=3), "--steps", "3",
         "--set", "batch_size=4", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["training_images"] == 12 and report["steps_per_epoch"] == 3 and report["image_encoder"] == "vit_b16"
    assert report["loader"]["batches"] == 3 and report["loader"]["images"] == 12
    assert [s["stage"] for s in report["stages"]] == [1, 2] and all(s["steps"] == 3 for s in report["stages"])
    for s in report["stages"]:
        assert s["step_s"] == max(s["compute_s"], s["data_wait_s"]) > 0
        assert s["epoch_minutes"] == pytest.approx(3 * s["step_s"] / 60)
    expected = (report["stages"][0]["epoch_minutes"] * 1 + report["stages"][1]["epoch_minutes"] * 3) / 60
    assert report["projected_schedule_hours"] == pytest.approx(expected)
    # the tiny overrides open the k-means gate at once; six steps went through the cluster state
    assert report["kmeans"]["initialized"] and report["kmeans"]["steps_seen"] == 6
    # no checkpoint, history or TensorBoard file (the preflight creates the output folders to test they are writable)
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]


def test_dry_run_stops_at_preflight_naming_the_missing_text_model(dry_run, tmp_path, tiny_dataset, capsys):  # noqa: F811
    missing = tmp_path / "no_such_bert"
    code = dry_run.main(["--config_file", configs(tmp_path, tiny_dataset, missing), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "preflight failed" in err and str(missing) in err
