"""scripts/ablate.py: each variant's overrides switch on exactly the components its name claims."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablate():
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(ablate, name):
    parser = ablate.pretrain_parser(name, 3, SimpleNamespace(dataset_dir=str(ROOT)), 4, "test")
    keys = (
        "stage1_epochs",
        "stage2_epochs",
        "seed",
        "network_def#weight_img",
        "network_def#weight_report",
        "network_def#kmeans_start_cosine",
        "network_def#cluster_temperature",
        "network_def#hard_negative_mode",
    )
    return {k.split("#")[-1]: parser.get_parsed_content(k) for k in keys}


def test_variants_add_one_component_each(ablate):
    b, c, d, e = (settings(ablate, n) for n in ("b_global", "c_img", "d_report", "e_stage1"))
    for s in (b, c, d, e):  # stage 1 only, for the whole budget of 4 epochs
        assert (s["stage1_epochs"], s["stage2_epochs"], s["seed"]) == (4, 0, 3)
    assert (b["weight_img"], b["weight_report"]) == (0.0, 0.0)
    assert (c["weight_img"], c["weight_report"]) == (1.0, 0.0)
    assert (d["weight_img"], d["weight_report"]) == (1.0, 1.0) and d["kmeans_start_cosine"] < -1  # gate never opens
    assert e["kmeans_start_cosine"] == 0.4
    f, g = settings(ablate, "f_full"), settings(ablate, "g_official")
    assert (f["stage1_epochs"], f["stage2_epochs"]) == (2, 2) == (g["stage1_epochs"], g["stage2_epochs"])
    assert (f["cluster_temperature"], f["hard_negative_mode"]) == (0.1, "additive")
    assert (g["cluster_temperature"], g["hard_negative_mode"]) == (1.0, "multiplicative")


def test_mean_sd_formatting(ablate):
    assert ablate.mean_sd([0.5, 0.7]) == "0.600 ± 0.141"
    assert ablate.mean_sd([float("nan"), 0.25]) == "0.250"
    assert ablate.mean_sd([]) == "-"


def documented_command(results_file: str) -> list[str]:
    """The grid command quoted in a demo results file (its flags and values, as written for users)."""
    import shlex

    text = (ROOT / "docs" / "results" / results_file).read_text(encoding="utf-8")
    start = text.index("scripts/evaluate_transfer.py")
    end = min([i for i in (text.find("`", start), text.find("\n\n", start)) if i > 0] + [len(text)])
    return shlex.split(text[start:end].replace("\\\n", " "))


@pytest.mark.parametrize(
    "constant, results_file",
    [("SEGMENTATION_DEMO_ARGS", "demo_segmentation.md"), ("DETECTION_DEMO_ARGS", "demo_detection.md")],
)
def test_localised_columns_use_the_demo_grids_settings(constant, results_file):
    """The ablation's segmentation / detection columns claim the demo grid's protocol: every flag they set has the
    value of the grid command its results file quotes."""
    from bundle.downstream import ablation_localised

    ours, documented = list(getattr(ablation_localised, constant)), documented_command(results_file)
    flags = [i for i, a in enumerate(ours) if a.startswith("--")]
    assert flags, constant
    for i, j in zip(flags, flags[1:] + [len(ours)]):
        flag, values = ours[i], ours[i + 1 : j]
        assert flag in documented, (flag, results_file)
        k = documented.index(flag)
        assert documented[k + 1 : k + 1 + len(values)] == values, (flag, values, results_file)


def test_localised_table_counts_the_cells_that_have_the_columns(ablate):
    from bundle.downstream.ablation_localised import missing_tasks

    results = [
        {"variant": "b_global", "seed": 0, "seg_mgca_dice": 0.8, "seg_pooled_dice": 0.6, "seg_val_interval": 2},
        {"variant": "b_global", "seed": 1, "seg_mgca_dice": 0.7, "seg_pooled_dice": 0.4, "seg_val_interval": 2},
        {"variant": "f_full", "seed": 0},  # no localised column yet: left out of the table, not a zero
    ]
    args = SimpleNamespace(localised=["segmentation"], localised_fraction=0.1)
    lines = ablate.localised_table(results, ["b_global", "f_full"], args)
    rows = [line for line in lines if line.startswith("| b_global") or line.startswith("| f_full")]
    assert rows == ["| b_global | 2 | 0.750 ± 0.071 | 0.500 ± 0.141 |"]
    assert "10 % of the training labels" in " ".join(lines)
    assert missing_tasks(results[0], ["segmentation", "detection"]) == ["detection"]
    assert missing_tasks(results[2], ["segmentation"]) == ["segmentation"]
    assert ablate.localised_table(results[2:], ["f_full"], args) == []


def test_a_cached_column_at_another_label_fraction_is_recomputed(ablate):
    from bundle.downstream.ablation_localised import missing_tasks

    args = SimpleNamespace(localised=["segmentation", "detection"], localised_fraction=0.1, detection_fraction=1.0)
    det = {"det_mAP_40_75": 0.03, "det_mAP_50": 0.05}
    seg = {"seg_mgca_dice": 0.8, "seg_pooled_dice": 0.6}
    legacy = {"variant": "b_global", "seed": 0, **seg, **det}  # cached before fractions were stored: 10 %
    assert missing_tasks(legacy, args.localised, args) == ["segmentation", "detection"]  # interval unknown
    assert missing_tasks(dict(legacy, seg_val_interval=2), args.localised, args) == ["detection"]
    current = dict(legacy, seg_fraction=0.1, det_fraction=1.0, seg_val_interval=2)
    assert missing_tasks(current, args.localised, args) == []
    assert missing_tasks(dict(current, seg_fraction=0.01), args.localised, args) == ["segmentation"]
    assert missing_tasks(dict(current, seg_val_interval=1), args.localised, args) == ["segmentation"]
    lines = " ".join(ablate.localised_table([current], ["b_global"], args))
    assert "segmentation 10 % / detection 100 % of the training labels" in lines


def test_a_finished_cell_of_other_training_pairs_is_refused(ablate, tmp_path):
    import json

    args = SimpleNamespace(subset_seed=None, demo_train_items=800)
    cell = tmp_path / "result.json"
    cell.write_text(json.dumps({"variant": "f_full", "seed": 1, "auroc_1": 0.8}))  # a cell from before 0.13
    assert ablate.reused_cell(cell, 1, args)["auroc_1"] == 0.8
    with pytest.raises(SystemExit, match="another --work_dir"):
        ablate.reused_cell(cell, 1, SimpleNamespace(subset_seed=0, demo_train_items=800))
    with pytest.raises(SystemExit, match="train_items"):
        ablate.reused_cell(cell, 1, SimpleNamespace(subset_seed=None, demo_train_items=2400))
    cell.write_text(
        json.dumps(
            {
                "variant": "f_full",
                "seed": 1,
                **ablate.cell_protocol(1, SimpleNamespace(subset_seed=0, demo_train_items=800)),
            }
        )
    )
    assert ablate.reused_cell(cell, 1, SimpleNamespace(subset_seed=0, demo_train_items=800))["subset_seed"] == 0
