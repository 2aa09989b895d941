"""COVIDx preparation: list files in both label schemes, split by patient, bad rows and duplicate ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_prepare_fixtures import load_json, run_script, write_gray

pytest.importorskip("bundle.data.manifest")

SPLITS = ("training", "validation", "test")


def build_covidx(src: Path) -> None:
    """5 normal and 3 pneumonia patients with 1 image each, 2 COVID-19 patients with 2 images each."""
    train = [f"N{k} n{k}.png normal rsna" for k in range(5)]
    train += [f"P{k} p{k}.jpg pneumonia rsna" for k in range(3)]
    train += [f"C{k} c{k}-{j}.png COVID-19 cohen" for k in range(2) for j in range(2)]
    train += ["X1 spaced name.png normal sirm"]  # a filename with a space (joined, the image exists)
    train += [
        "X2 missing.png normal rsna",  # image listed but missing
        "X3 short.png normal",  # 3 fields
        "N0 n0.png normal rsna",
    ]  # an identical repeat
    test = ["T1 t1.png normal rsna", "T2 t2.png pneumonia rsna", "T3 t3.png COVID-19 cohen"]
    (src / "train.txt").parent.mkdir(parents=True)
    (src / "train.txt").write_text("\n".join(train) + "\n")
    (src / "test.txt").write_text("\n".join(test) + "\n")
    for line in train:
        fields = line.split()
        name = " ".join(fields[1:-2])
        if len(fields) >= 4 and name != "missing.png":
            write_gray(src / "train" / name, 20, 16)
    for line in test:
        write_gray(src / "test" / line.split()[1], 20, 16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("covidx")
    build_covidx(root / "src")
    code = run_script("covidx", "--src", str(root / "src"), "--out", str(root / "out"))
    return root, code


def test_three_class_manifest_split_by_patient(prepared):
    root, code = prepared
    assert code == 0
    manifest = load_json(root / "out" / "manifests" / "classification.json")
    assert manifest["meta"]["class_names"] == ["normal", "pneumonia", "COVID-19"]
    items = {it["id"]: it for s in SPLITS for it in manifest[s]}
    assert items["n0.png"]["label"] == 0 and items["p1.jpg"]["label"] == 1 and items["c1-0.png"]["label"] == 2
    assert items["spaced name.png"]["image"] == "../src/train/spaced name.png"
    # patients per stratum: normal 6 -> 4.8/1.2 -> 5/1; pneumonia 3 -> 2.4/0.6 -> 2/1; COVID 2 -> 1.6/0.4 -> 2/0
    counts = {s: [sum(it["label"] == c for it in manifest[s]) for c in range(3)] for s in SPLITS}
    assert counts == {"training": [5, 2, 4], "validation": [1, 1, 0], "test": [1, 1, 1]}
    covid_patients = {s: {it["id"][:2] for it in manifest[s] if it["label"] == 2} for s in SPLITS}
    assert covid_patients["training"] == {"c0", "c1"}  # both images of a patient stay together
    assert "patient" not in items["n0.png"]


def test_summary_skips_and_notes(prepared):
    root, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_covidx.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {"image listed but missing": 1, "malformed list row": 1, "duplicate row (identical)": 1}
    assert summary["notes"]["label_scheme"].startswith("3-class")
    assert summary["manifests"]["classification"]["splits"]["training"]["classes"] == {
        "COVID-19": 4,
        "normal": 5,
        "pneumonia": 2,
    }


def test_binary_scheme_and_official_validation_list(tmp_path):
    src = tmp_path / "src"
    lines = {
        "train": ["A a.png negative x", "B b.png positive y"],
        "val": ["C c.png positive y"],
        "test": ["D d.png negative x", "E e.png POSITIVE y"],
    }
    for name, rows in lines.items():
        (src / name).mkdir(parents=True)
        (src / f"{name}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            write_gray(src / name / row.split()[1], 8, 8)
    assert (
        run_script("covidx", "--src", str(src), "--out", str(tmp_path / "out"), "--val_list", str(src / "val.txt")) == 0
    )
    manifest = load_json(tmp_path / "out" / "manifests" / "classification.json")
    assert manifest["meta"]["class_names"] == ["negative", "positive"]
    assert [(it["id"], it["label"]) for it in manifest["training"]] == [("a.png", 0), ("b.png", 1)]
    assert [(it["id"], it["label"]) for it in manifest["validation"]] == [("c.png", 1)]
    assert sorted((it["id"], it["label"]) for it in manifest["test"]) == [("d.png", 0), ("e.png", 1)]


def test_mixed_label_schemes_are_an_error(tmp_path, caplog):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train.txt").write_text("A a.png normal x\nB b.png positive y\n")
    (src / "test.txt").write_text("C c.png normal x\n")
    assert run_script("covidx", "--src", str(src), "--out", str(tmp_path / "out"), "--no_image_check") == 2
    assert "match neither label scheme" in caplog.text


def test_duplicate_id_across_train_and_test_is_an_error(prepared, tmp_path, caplog):
    root, _ = prepared
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    with open(src / "test.txt", "a") as f:
        f.write("N1 n1.png normal rsna\n")
    shutil.copy(src / "train" / "n1.png", src / "test" / "n1.png")
    assert run_script("covidx", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "appear more than once across splits: n1.png" in caplog.text
