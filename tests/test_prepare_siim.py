"""SIIM-ACR preparation on a fixture in the real format: train-rle.csv with its spaced header and several rows per
image, DICOMs in nested study/series folders; masks checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_prepare_fixtures import load_json, read_png, run_script, sha256_of_ids, write_dicom
from test_prepare_rle import reference_encode

pytest.importorskip("bundle.data.manifest")

H, W = 40, 24  # non-square: the column-major RLE would come out transposed if x and y were swapped
SPLITS = ("training", "validation", "test")


def object_masks() -> dict[str, list[np.ndarray]]:
    a = np.zeros((H, W), np.uint8)
    a[5:9, 2:6] = 1
    b = np.zeros((H, W), np.uint8)
    b[20:35, 18:20] = 1
    masks = {"1.2.pos.two": [a, b]}  # one image, two objects -> two CSV rows, united
    for k in range(4):
        m = np.zeros((H, W), np.uint8)
        m[k : k + 3, 10 : 12 + k] = 1
        masks[f"1.2.pos.{k}"] = [m]
    return masks


def build_siim(src: Path) -> dict[str, np.ndarray]:
    rows = ["ImageId, EncodedPixels"]  # the real header has a space before EncodedPixels
    expected = {}
    for image_id, objects in object_masks().items():
        rows += [f"{image_id}, {reference_encode(m)}" for m in objects]
        expected[image_id] = np.bitwise_or.reduce(objects)
    for k in range(7):
        rows.append(f"1.2.neg.{k}, -1")
        expected[f"1.2.neg.{k}"] = np.zeros((H, W), np.uint8)
    rows += ["1.2.bad.odd, 5 3 7", "1.2.bad.beyond, 950 20", "1.2.missing, -1", "1.2.mixed, -1", "1.2.mixed, 1 2"]
    src.mkdir(parents=True)
    (src / "train-rle.csv").write_text("\n".join(rows) + "\n")
    ids = set(expected) | {"1.2.bad.odd", "1.2.bad.beyond", "1.2.mixed", "1.2.unlisted"}
    for n, image_id in enumerate(sorted(ids)):
        write_dicom(
            src / "dicom-images-train" / f"study{n}" / f"series{n}" / f"{image_id}.dcm", np.full((H, W), 60, np.uint8)
        )
    return expected


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    expected = build_siim(root / "src")
    code = run_script("siim", "--src", str(root / "src"), "--out", str(root / "out"))
    return root, code, expected


def all_items(manifest):
    return {it["id"]: it for s in SPLITS for it in manifest[s]}


def test_cli_succeeds_and_masks_match_the_encoded_objects(prepared):
    root, code, expected = prepared
    assert code == 0
    manifest = load_json(root / "out" / "manifests" / "segmentation.json")
    items = all_items(manifest)
    for image_id, item in items.items():
        np.testing.assert_array_equal(read_png(root / "out" / item["label"]), expected[image_id], err_msg=image_id)
        assert item["image"].startswith("../src/dicom-images-train/study")
    assert read_png(root / "out" / items["1.2.pos.two"]["label"]).sum() == 16 + 30


def test_split_is_by_image_stratified_and_training_is_balanced(prepared):
    root, _, _ = prepared
    manifest = load_json(root / "out" / "manifests" / "segmentation.json")
    positive = {s: sum(".pos." in it["id"] for it in manifest[s]) for s in SPLITS}
    negative = {s: sum(".neg." in it["id"] for it in manifest[s]) for s in SPLITS}
    # 5 positives -> 3.5/0.75/0.75 -> 3/1/1; 7 negatives -> 4.9/1.05/1.05 -> 5/1/1, then balanced to 3 in training
    assert positive == {"training": 3, "validation": 1, "test": 1}
    assert negative == {"training": 3, "validation": 1, "test": 1}
    ids = [it["id"] for s in SPLITS for it in manifest[s]]
    assert len(ids) == len(set(ids))  # each image (not each CSV row) in exactly one split
    summary = load_json(root / "out" / "manifests" / "summary_siim.json")
    assert summary["filtered"] == {"training negatives left out by balancing": 2}


def test_skips_are_counted_by_reason(prepared):
    root, _, _ = prepared
    summary = load_json(root / "out" / "manifests" / "summary_siim.json")
    reasons = {r: v["count"] for r, v in summary["skipped"]["reasons"].items()}
    assert reasons == {"malformed RLE": 2, "image listed but missing": 1, "both '-1' and RLE rows": 1}
    assert summary["notes"]["dicoms_without_rle_rows"] == 1
    manifest = load_json(root / "out" / "manifests" / "segmentation.json")
    assert summary["manifests"]["segmentation"]["splits"]["test"]["sha256"] == sha256_of_ids(
        it["id"] for it in manifest["test"]
    )
    fractions = manifest["meta"]["fractions"]
    assert set(fractions["0.01"]) <= set(fractions["0.1"]) <= set(fractions["1.0"])
    assert set(fractions["1.0"]) == {it["id"] for it in manifest["training"]}


def test_no_balance_keeps_every_training_image(prepared, tmp_path):
    root, _, _ = prepared
    assert run_script("siim", "--src", str(root / "src"), "--out", str(tmp_path), "--no_balance") == 0
    manifest = load_json(tmp_path / "manifests" / "segmentation.json")
    assert [len(manifest[s]) for s in SPLITS] == [8, 2, 2]
    assert manifest["meta"]["training_balanced"] is False


def test_two_dicoms_with_one_image_id_is_an_error(prepared, tmp_path, caplog):
    root, _, _ = prepared
    import shutil

    src = tmp_path / "src"
    shutil.copytree(root / "src", src)
    write_dicom(src / "dicom-images-train" / "other" / "x" / "1.2.neg.0.dcm", np.zeros((H, W), np.uint8))
    assert run_script("siim", "--src", str(src), "--out", str(tmp_path / "out")) == 2
    assert "two DICOM files for image 1.2.neg.0" in caplog.text
