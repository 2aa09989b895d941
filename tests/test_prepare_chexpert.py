"""CheXpert preparation: uncertain (-1) and blank labels under U-Ones/U-Zeros, frontal only, MGCA's split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_prepare_fixtures import load_json, run_script, write_gray

from bundle.data.prepare.chexpert import TASKS, image_relpath, map_labels, uncertainty_policy

pytest.importorskip("bundle.data.manifest")

OBSERVATIONS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + OBSERVATIONS
SPLITS = ("training", "validation", "test")


def row(path: str, view: str, **labels: str) -> list[str]:
    values = {name: "" for name in OBSERVATIONS}
    values.update({k.replace("_", " "): v for k, v in labels.items()})
    return [f"CheXpert-v1.0-small/{path}", "Female", "60", view, "AP" if view == "Frontal" else ""] + [
        values[name] for name in OBSERVATIONS
    ]


def build_chexpert(src: Path) -> None:
    train = [
        # uncertain everywhere it matters: U-Ones -> Atelectasis 1, Pleural Effusion 1; U-Zeros -> Cardiomegaly 0;
        # blank Consolidation -> 0; Edema 1
        row(
            "train/patient00001/study1/view1_frontal.jpg",
            "Frontal",
            Atelectasis="-1.0",
            Cardiomegaly="-1.0",
            Edema="1.0",
            Pleural_Effusion="-1.0",
        ),
        row("train/patient00001/study1/view2_lateral.jpg", "Lateral", Edema="1.0"),
        row(
            "train/patient00002/study1/view1_frontal.jpg",
            "Frontal",
            Cardiomegaly="1.0",
            Consolidation="-1.0",
            Atelectasis="0.0",
            Pleural_Effusion="0.0",
        ),
        row("train/patient00003/study1/view1_frontal.jpg", "Frontal", No_Finding="1.0"),
        row("train/patient00004/study1/view1_frontal.jpg", "Frontal", Consolidation="1.0"),
        row("train/patient00005/study2/view1_frontal.jpg", "Frontal", Edema="0.0"),
        row("train/patient00006/study1/view1_frontal.jpg", "Frontal", Edema="2.0"),  # unreadable label
        row("train/patient00007/study1/view1_frontal.jpg", "Frontal", Edema="1.0"),  # image missing
    ]
    valid = [
        row("valid/patient64541/study1/view1_frontal.jpg", "Frontal", Cardiomegaly="1.0", Edema="1.0"),
        row("valid/patient64542/study1/view1_frontal.jpg", "Frontal", Pleural_Effusion="1.0"),
        row("valid/patient64542/study1/view2_lateral.jpg", "Lateral"),
    ]
    src.mkdir(parents=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        with open(src / name, "w", newline="") as f:
            csv.writer(f).writerows([HEADER] + rows)
        for r in rows:
            if "patient00007" not in r[0]:
                write_gray(src / image_relpath(r[0]), 24, 20)


def test_label_mapping_policy():
    policy = uncertainty_policy(["Atelectasis", "Edema", "Pleural Effusion"], ["Cardiomegaly", "Consolidation"])
    values = {
        "Atelectasis": "-1.0",
        "Cardiomegaly": "-1.0",
        "Consolidation": "",
        "Edema": "1.0",
        "Pleural Effusion": "-1",
    }
    assert TASKS == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert map_labels(values, policy) == [1.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="Edema='x'"):
        map_labels(dict(values, Edema="x"), policy)
    with pytest.raises(ValueError, match="in both lists"):
        uncertainty_policy(
            ["Atelectasis", "Edema", "Pleural Effusion", "Cardiomegaly"], ["Cardiomegaly", "Consolidation"]
        )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    build_chexpert(root / "CheXpert-v1.0-small")
    code = run_script(
        "chexpert", "--src", str(root / "CheXpert-v1.0-small"), "--out", str(root / "out"), "--val_size", "2"
    )
    return root, code


def test_cli_labels_and_splits(prepared):
    root, code = prepared
    assert code == 0
    manifest = load_json(root / "out" / "manifests" / "classification.json")
    items = {it["id"]: it for s in SPLITS for it in manifest[s]}
    assert items["train/patient00001/study1/view1_frontal"]["label"] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert items["train/patient00002/study1/view1_frontal"]["label"] == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert items["train/patient00003/study1/view1_frontal"]["label"] == [0.0] * 5
    assert (
        items["train/patient00001/study1/view1_frontal"]["image"]
        == "../CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    )
    assert [len(manifest[s]) for s in SPLITS] == [3, 2, 2]  # 5 usable frontal training images, 2 to validation
    assert sorted(it["id"] for it in manifest["test"]) == [
        "valid/patient64541/study1/view1_frontal",
        "valid/patient64542/study1/view1_frontal",
    ]
    assert not any("lateral" in i for i in items)
    assert manifest["meta"]["class_names"] == TASKS


def test_summary_counts(prepared):
    root, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_chexpert.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {"unreadable label value": 1, "image listed but missing": 1}
    assert summary["filtered"] == {"not frontal (train.csv)": 1, "not frontal (valid.csv)": 1}
    assert summary["manifests"]["classification"]["splits"]["test"]["classes"] == {
        "Cardiomegaly": 1,
        "Edema": 1,
        "Pleural Effusion": 1,
    }


def test_u_ones_can_be_changed(prepared, tmp_path):
    root, _ = prepared
    assert (
        run_script(
            "chexpert",
            "--src",
            str(root / "CheXpert-v1.0-small"),
            "--out",
            str(tmp_path),
            "--val_size",
            "2",
            "--u_ones",
            "Atelectasis,Edema,Pleural Effusion,Cardiomegaly",
            "--u_zeros",
            "Consolidation",
        )
        == 0
    )
    manifest = load_json(tmp_path / "manifests" / "classification.json")
    items = {it["id"]: it for s in SPLITS for it in manifest[s]}
    assert items["train/patient00001/study1/view1_frontal"]["label"] == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_validation_by_patient_keeps_patients_whole(prepared, tmp_path):
    root, _ = prepared
    assert (
        run_script(
            "chexpert",
            "--src",
            str(root / "CheXpert-v1.0-small"),
            "--out",
            str(tmp_path),
            "--val_size",
            "1",
            "--val_split_by",
            "patient",
        )
        == 0
    )
    manifest = load_json(tmp_path / "manifests" / "classification.json")
    patients = {s: {it["id"].split("/")[1] for it in manifest[s]} for s in ("training", "validation")}
    assert not patients["training"] & patients["validation"] and len(manifest["validation"]) == 1


def test_missing_task_column_is_an_error(tmp_path, caplog):
    src = tmp_path / "CheXpert-v1.0-small"
    src.mkdir()
    (src / "train.csv").write_text("Path,Frontal/Lateral,Atelectasis\nx.jpg,Frontal,1.0\n")
    (src / "valid.csv").write_text("Path,Frontal/Lateral,Atelectasis\nx.jpg,Frontal,1.0\n")
    assert run_script("chexpert", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "missing column(s) ['Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion']" in caplog.text
