"""RSNA Pneumonia preparation on a fixture in the real format (labels CSV + pydicom-written DICOMs), via the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_prepare_fixtures import load_json, read_png, run_script, sha256_of_ids, write_dicom

pytest.importorskip("bundle.data.manifest")

ROWS, COLS = 64, 48  # non-square, so an x/y swap shows
HEADER = ["patientId", "x", "y", "width", "height", "Target"]


def build_rsna(src: Path) -> None:
    rows = [["pos-two", 2, 3, 10, 5, 1], ["pos-two", 20.5, 30, 4, 10, 1]]  # one patient, two boxes
    rows += [[f"pos-{k}", 1, 1, 5, 5, 1] for k in range(3)]  # 3 more positives
    rows += [[f"neg-{k}", "", "", "", "", 0] for k in range(6)]  # 6 negatives (empty box)
    rows += [
        ["missing-image", "", "", "", "", 0],  # listed, no DICOM
        ["bad-box", 5, 5, "", 7, 1],  # positive without a width
        ["outside", 40, 10, 20, 5, 1],  # x2 = 60 > 48 columns
        ["conflict", "", "", "", "", 0],
        ["conflict", 1, 1, 2, 2, 1],
    ]  # Target 0 and 1
    src.mkdir(parents=True)
    with open(src / "stage_2_train_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([HEADER] + rows)
    for pid in {r[0] for r in rows} - {"missing-image"} | {"unlisted"}:
        write_dicom(src / "stage_2_train_images" / f"{pid}.dcm", np.full((ROWS, COLS), 80, np.uint8))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    build_rsna(root / "src")
    code = run_script("rsna", "--src", str(root / "src"), "--out", str(root / "out"), "--seed", "0")
    return root, code


def test_cli_succeeds_and_writes_three_manifests_and_the_summary(prepared):
    root, code = prepared
    assert code == 0
    names = sorted(p.name for p in (root / "out" / "manifests").iterdir())
    assert names == ["classification.json", "detection.json", "segmentation.json", "summary_rsna.json"]


def test_split_counts_are_stratified_70_15_15_by_patient(prepared):
    root, _ = prepared
    manifest = load_json(root / "out" / "manifests" / "classification.json")
    # 4 positives -> 2.8/0.6/0.6 -> 3/1/0 (largest remainder, ties in split order); 6 negatives -> 4.2/0.9/0.9 -> 4/1/1
    positives = {s: sum(it["label"] == [1.0] for it in manifest[s]) for s in ("training", "validation", "test")}
    negatives = {s: sum(it["label"] == [0.0] for it in manifest[s]) for s in ("training", "validation", "test")}
    assert positives == {"training": 3, "validation": 1, "test": 0}
    assert negatives == {"training": 4, "validation": 1, "test": 1}
    for other in ("detection", "segmentation"):  # the same patients in the same splits in every manifest
        m = load_json(root / "out" / "manifests" / f"{other}.json")
        for s in ("training", "validation", "test"):
            assert {it["id"] for it in m[s]} == {it["id"] for it in manifest[s]}


def test_boxes_labels_and_masks_are_exact(prepared):
    root, _ = prepared
    manifests = {
        n: load_json(root / "out" / "manifests" / f"{n}.json") for n in ("classification", "detection", "segmentation")
    }
    item = {n: {it["id"]: it for s in ("training", "validation", "test") for it in m[s]} for n, m in manifests.items()}
    assert item["classification"]["pos-two"]["label"] == [1.0]
    assert item["classification"]["neg-0"]["label"] == [0.0]
    assert item["detection"]["pos-two"]["box"] == [[2.0, 3.0, 12.0, 8.0], [20.5, 30.0, 24.5, 40.0]]
    assert item["detection"]["pos-two"]["box_label"] == [0, 0]
    assert item["detection"]["neg-0"]["box"] == [] and item["detection"]["neg-0"]["box_label"] == []
    assert item["detection"]["pos-two"]["image"] == "../src/stage_2_train_images/pos-two.dcm"
    expected = np.zeros((ROWS, COLS), np.uint8)
    expected[3:8, 2:12] = 1  # x 2..12, y 3..8
    expected[30:40, 20:25] = 1  # x 20.5..24.5 covers columns 20..24
    mask = read_png(root / "out" / item["segmentation"]["pos-two"]["label"])
    np.testing.assert_array_equal(mask, expected)
    assert not read_png(root / "out" / item["segmentation"]["neg-3"]["label"]).any()
    assert manifests["detection"]["meta"]["class_names"] == ["pneumonia"]


def test_summary_counts_skips_and_checksums(prepared):
    root, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_rsna.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {
        "image listed but missing": 1,
        "malformed box": 1,
        "box outside the image": 1,
        "conflicting Target values": 1,
    }
    assert summary["notes"] == {"boxes": 5, "dicoms_without_label_rows": 1}
    manifest = load_json(root / "out" / "manifests" / "detection.json")
    for split in ("training", "validation", "test"):
        entry = summary["manifests"]["detection"]["splits"][split]
        assert entry["count"] == len(manifest[split])
        assert entry["sha256"] == sha256_of_ids(it["id"] for it in manifest[split])
    assert summary["manifests"]["detection"]["splits"]["training"]["classes"]["box"] == sum(
        len(it["box"]) for it in manifest["training"]
    )


def test_fractions_are_nested_and_identical_across_manifests(prepared):
    root, _ = prepared
    fractions = [
        load_json(root / "out" / "manifests" / f"{n}.json")["meta"]["fractions"]
        for n in ("classification", "detection", "segmentation")
    ]
    assert fractions[0] == fractions[1] == fractions[2]
    small, medium, full = (set(fractions[0][k]) for k in ("0.01", "0.1", "1.0"))
    assert small <= medium <= full and len(full) == 7
    # 7 training items (3 positive, 4 negative): 1% and 10% keep one item, from the larger remainder (negatives)
    assert len(small) == len(medium) == 1 and next(iter(small)).startswith("neg-")


def test_manifests_load_through_the_bundle_loader(prepared):
    from bundle.data.image_io import load_radiograph
    from bundle.data.label_fractions import load_fraction
    from bundle.data.manifest import load_manifest

    root, _ = prepared
    path = root / "out" / "manifests" / "segmentation.json"
    items = load_manifest(str(path), "training")
    assert len(items) == 7 and all(Path(it["image"]).is_file() and Path(it["label"]).is_file() for it in items)
    subset = load_fraction(str(path), 0.01)
    assert [it["id"] for it in subset] == load_json(path)["meta"]["fractions"]["0.01"]
    assert Path(subset[0]["image"]).is_absolute() and Path(subset[0]["label"]).is_file()
    image = load_radiograph(items[0]["image"])  # the bundle reads the original DICOM the manifest points at
    assert image.shape == (ROWS, COLS)


def test_rerun_is_byte_identical(prepared):
    root, _ = prepared
    manifests = root / "out" / "manifests"
    before = {p.name: p.read_bytes() for p in manifests.glob("*.json") if not p.name.startswith("summary")}
    assert run_script("rsna", "--src", str(root / "src"), "--out", str(root / "out")) == 0
    assert {p.name: p.read_bytes() for p in manifests.glob("*.json") if not p.name.startswith("summary")} == before


def test_strict_mode_and_a_missing_column_fail_with_a_clear_message(prepared, tmp_path, caplog):
    root, _ = prepared
    assert run_script("rsna", "--src", str(root / "src"), "--out", str(tmp_path / "o"), "--strict") == 2
    assert "--strict" in caplog.text
    bad = tmp_path / "bad"
    (bad / "stage_2_train_images").mkdir(parents=True)
    (bad / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height\nA,1,2,3,4\n")
    assert run_script("rsna", "--src", str(bad), "--out", str(tmp_path / "o2")) == 2
    assert "missing column(s) ['Target']" in caplog.text
