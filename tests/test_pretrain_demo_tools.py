"""The loss-curve plot, the history reader and scripts/run_demo.py's behaviour when a piece is missing."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image
from test_pretrain_fixtures import ROOT

from bundle.engines.plotting import moving_average, plot_pretrain_curves
from bundle.engines.progress import read_history


def _write_history(path, resumed_duplicate=True):
    lines = []
    for it in range(1, 13):
        stage = 1 if it <= 6 else 2
        lines.append(
            {
                "kind": "train",
                "iteration": it,
                "epoch": (it - 1) // 3 + 1,
                "stage": stage,
                "loss": 10.0 - it * 0.3,
                "loss_img": -0.1,
                "loss_report": 5.0,
                "loss_global": 3.0,
                "loss_recon": 0.0 if stage == 1 else 2.0,
                "lr": 1e-4,
            }
        )
        if it % 3 == 0:
            lines.append(
                {
                    "kind": "val",
                    "iteration": it,
                    "epoch": it // 3,
                    "stage": stage,
                    "val_loss": 9.0 - it * 0.2,
                    "val_i2t_top1": 0.1 * it / 3,
                    "val_t2i_top1": 0.05 * it / 3,
                    "val_chance_top1": 0.125,
                }
            )
    if resumed_duplicate:  # a resumed run repeats iteration 4 with a different value: the later record wins
        lines.append({"kind": "train", "iteration": 4, "epoch": 2, "stage": 1, "loss": 123.0})
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_moving_average_matches_a_loop():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    assert np.allclose(moving_average(values, 3), expected)


def test_history_keeps_the_last_record_per_iteration(tmp_path):
    _write_history(tmp_path / "history.jsonl")
    train, val = read_history(str(tmp_path / "history.jsonl"))
    assert [r["iteration"] for r in train] == list(range(1, 13))
    assert train[3]["loss"] == 123.0 and len(val) == 4


def test_plot_writes_a_png_with_three_panels(tmp_path):
    _write_history(tmp_path / "history.jsonl")
    png = plot_pretrain_curves(str(tmp_path / "history.jsonl"), str(tmp_path / "out" / "curves.png"), smooth=2)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1600, 450)
        # not a blank canvas: the curves put many distinct colours on it
        assert len(image.convert("RGB").getcolors(maxcolors=100000) or []) > 20


def test_plot_refuses_an_empty_history(tmp_path):
    (tmp_path / "history.jsonl").write_text("")
    with pytest.raises(ValueError, match="no training or validation record"):
        plot_pretrain_curves(str(tmp_path / "history.jsonl"), str(tmp_path / "x.png"))


def _load_run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "scripts" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_demo_without_the_data_generator_prints_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    run_demo = _load_run_demo()
    monkeypatch.setattr(run_demo, "ROOT", str(tmp_path))  # a checkout without scripts/make_demo_data.py
    assert run_demo.main(["--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "make_demo_data.py is not in this checkout yet" in out[0]


def test_run_demo_with_a_missing_module_prints_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    run_demo = _load_run_demo()
    (tmp_path / "demo" / "manifests").mkdir(parents=True)
    (tmp_path / "demo" / "manifests" / "pretrain.json").write_text("{}")
    monkeypatch.setattr(run_demo, "REQUIRED_MODULES", ("bundle.engines.trainer", "bundle.not_built_yet"))
    assert run_demo.main(["--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "[demo] not built yet: bundle.not_built_yet; demo pretraining skipped."


CHAINED = """Traceback (most recent call last):
  File "/x/manifest.py", line 80, in read_manifest
    content = json.loads(path.read_text(encoding="utf-8"))
FileNotFoundError: [Errno 2] No such file or directory: '/d/manifests/pretrain.json'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/config_item.py", line 374, in evaluate
    return eval(value[len(self.prefix) :], globals_, locals)
bundle.data.manifest.ManifestError: manifest not found: /d/manifests/pretrain.json

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/workflows.py", line 1, in initialize
RuntimeError: Failed to evaluate ConfigExpression: 
2026-12-01 10:00:00,000 - INFO - a log line after it
"""  # noqa: W291 (MONAI prints the message with a trailing space)


def test_traceback_filter_folds_tracebacks_and_finds_the_bundle_error():
    from bundle.engines.error_report import TracebackFilter, bundle_error

    shown = TracebackFilter()
    visible = [text for line in CHAINED.splitlines() for text in shown.feed(line)]
    assert visible == [
        "  FileNotFoundError: [Errno 2] No such file or directory: '/d/manifests/pretrain.json'",
        "",
        "",
        "  bundle.data.manifest.ManifestError: manifest not found: /d/manifests/pretrain.json",
        "",
        "",
        "  RuntimeError: Failed to evaluate ConfigExpression: ",
        "2026-12-01 10:00:00,000 - INFO - a log line after it",
    ]
    assert len(shown.lines) == len(CHAINED.splitlines())
    assert bundle_error(shown.lines) == "ManifestError: manifest not found: /d/manifests/pretrain.json"


@pytest.mark.slow
def test_run_demo_prints_the_bundle_error_last_and_keeps_the_traceback_in_a_file(tmp_path, capsys):
    run_demo = _load_run_demo()
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/pretrain.yaml",
        "--meta_file",
        "metadata.json",
        "--dataset_dir",
        str(tmp_path / "no_data"),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "runs"),
    ]
    code, message = run_demo.run_bundle(cmd, log_path=str(tmp_path / "runs" / "error.log"))
    out = capsys.readouterr().out
    assert code != 0
    assert message == f"ManifestError: manifest not found: {tmp_path / 'no_data' / 'manifests' / 'pretrain.json'}"
    assert "Traceback" not in out and len(out.splitlines()) < 40
    assert "Traceback (most recent call last):" in (tmp_path / "runs" / "error.log").read_text()
