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
