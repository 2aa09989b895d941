"""Object-CXR preparation: shape strings (rectangle, ellipse, polygon) to tight boxes, dev set as test, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from test_prepare_fixtures import load_json, run_script, sha256_of_ids, write_gray

from bundle.data.prepare.object_cxr import AnnotationError, parse_annotation

pytest.importorskip("bundle.data.manifest")

H, W = 80, 64
SPLITS = ("training", "validation", "test")


def test_parse_annotation_shapes():
    # polygon points (10,12) (30,8) (25,40) (5,20) -> x 5..30, y 8..40; ellipse given by its bounding box
    assert parse_annotation("2 10 12 30 8 25 40 5 20;1 40 5 60 25") == [[5, 8, 30, 40], [40, 5, 60, 25]]
    assert parse_annotation("0 1 2 11 12;") == [[1, 2, 11, 12]]
    assert parse_annotation("") == []


@pytest.mark.parametrize(
    "bad, why",
    [
        ("3 1 2 3 4", "unknown type"),
        ("2 1 2 3 4", "polygon"),
        ("0 1 2 3", "4 numbers"),
        ("0 1 2 a 4", "non-numeric"),
        ("0 1 2 1 9", "zero-area"),
        ("0 1 2 5 6;;0 1 2 5 6", "empty shape"),
    ],
)
def test_malformed_annotations_raise(bad, why):
    with pytest.raises(AnnotationError, match=why):
        parse_annotation(bad)


def build_object_cxr(src: Path) -> None:
    train = [
        ("00001.jpg", "2 10 12 30 8 25 40 5 20;1 40 5 60 25"),
        ("00002.jpg", "0 1 2 11 12"),
        ("00003.jpg", "0 50 70 70 90"),
    ]  # reaches past 64 x 80: clipped
    train += [(f"0001{k}.jpg", f"0 {k} {k} {k + 9} {k + 9}") for k in range(3)]  # 6 positives in all
    train += [(f"0002{k}.jpg", "") for k in range(10)]  # 10 negatives
    train += [
        ("00030.jpg", "3 1 2 3 4"),
        ("00031.jpg", "2 1 2 3 4"),  # malformed
        ("00032.jpg", "0 1 1 5 5"),  # image missing
        ("00033.jpg", "0 100 100 120 120"),
    ]  # entirely outside
    dev = [("08001.jpg", "0 3 4 13 14"), ("08002.jpg", ""), ("08003.jpg", "")]
    for name, rows in (("train", train), ("dev", dev)):
        (src / name).mkdir(parents=True)
        with open(src / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("image_name", "annotation")] + rows)
        for image_name, _ in rows:
            if image_name != "00032.jpg":
                write_gray(src / name / image_name, H, W)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocxr")
    build_object_cxr(root / "src")
    code = run_script("object_cxr", "--src", str(root / "src"), "--out", str(root / "out"))
    return root, code


def test_cli_manifest_boxes_and_splits(prepared):
    root, code = prepared
    assert code == 0
    manifest = load_json(root / "out" / "manifests" / "detection.json")
    items = {it["id"]: it for s in SPLITS for it in manifest[s]}
    assert items["00001"]["box"] == [[5, 8, 30, 40], [40, 5, 60, 25]] and items["00001"]["box_label"] == [0, 0]
    assert items["00003"]["box"] == [[50, 70, 64, 80]]
    assert items["00020"]["box"] == [] and items["00020"]["image"] == "../src/train/00020.jpg"
    assert sorted(it["id"] for it in manifest["test"]) == ["08001", "08002", "08003"]
    # 6 positives -> 5.4/0.6 -> 5/1; 10 negatives -> 9/1
    assert [sum(bool(it["box"]) for it in manifest[s]) for s in ("training", "validation")] == [5, 1]
    assert [sum(not it["box"] for it in manifest[s]) for s in ("training", "validation")] == [9, 1]


def test_summary_counts(prepared):
    root, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_object_cxr.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {"malformed annotation": 2, "image listed but missing": 1, "annotation outside the image": 1}
    assert summary["notes"] == {"shapes_clipped_to_the_image": 1}
    test_entry = summary["manifests"]["detection"]["splits"]["test"]
    assert test_entry["count"] == 3 and test_entry["sha256"] == sha256_of_ids(["08001", "08002", "08003"])
    assert test_entry["classes"] == {"box": 1, "image_with_boxes": 1, "image_without_boxes": 2}
    fractions = summary["manifests"]["detection"]["fractions"]
    assert [fractions[k]["count"] for k in ("0.01", "0.1", "1.0")] == [1, 1, 14]


def test_duplicate_id_across_train_and_dev_is_an_error(prepared, tmp_path, caplog):
    root, _ = prepared
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    with open(src / "dev.csv", "a", newline="") as f:
        csv.writer(f).writerow(("00002.jpg", ""))
    shutil.copy(src / "train" / "00002.jpg", src / "dev" / "00002.jpg")
    assert run_script("object_cxr", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "00002 in ['training', 'test']" in caplog.text or "00002 in ['validation', 'test']" in caplog.text


def test_conflicting_duplicate_rows_are_an_error(prepared, tmp_path, caplog):
    root, _ = prepared
    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    with open(src / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(("00002.jpg", "0 1 1 3 3"))
    assert run_script("object_cxr", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "00002.jpg is listed twice with different annotations" in caplog.text
