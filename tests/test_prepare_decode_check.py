"""`--check_decode` of every preparation script (bundle.data.prepare.common): images whose header is intact but whose
data is cut off (half-downloaded JPG / DICOM) are skipped, counted and listed instead of failing in training; and the
DICOM reader says "ends before its pixel data" for a file cut before its pixel data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_prepare_fixtures import load_json, run_script, write_dicom
from test_prepare_mimic_cxr import build_mimic

from bundle.data.image_io import RadiographReadError, load_radiograph


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_check_decode_skips_and_lists_truncated_images(tmp_path, workers):
    src, out = tmp_path / "src", tmp_path / "out"
    build_mimic(src)
    truncated = src / "files" / "p10" / "p10000032" / "s50000001" / "d01.jpg"
    _cut(truncated, 0.5)
    assert run_script("mimic_cxr", "--src", str(src), "--out", str(tmp_path / "plain")) == 0
    # without the check the header-only test passes it: it is in the manifest
    plain = load_json(tmp_path / "plain" / "manifests" / "pretrain.json")
    assert "d01" in [item["id"] for item in plain["training"]]

    assert run_script("mimic_cxr", "--src", str(src), "--out", str(out), "--check_decode", "--workers", workers) == 0
    manifest = load_json(out / "manifests" / "pretrain.json")
    ids = {split: [item["id"] for item in manifest[split]] for split in ("training", "validation", "test")}
    assert ids["training"] == [i for i in (item["id"] for item in plain["training"]) if i != "d01"]
    summary = load_json(out / "manifests" / "summary_mimic_cxr.json")
    reason = summary["skipped"]["reasons"]["image cannot be decoded (truncated or corrupt)"]
    assert reason["count"] == 1 and reason["examples"][0].startswith("d01 (RadiographReadError: ")
    assert "truncated" in reason["examples"][0].lower()
    assert summary["notes"]["decode_check_failures"] == 1


def test_a_dicom_cut_before_its_pixel_data_says_so(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))
    data = path.read_bytes()
    pixel_start = len(data) - 64 * 64  # the pixel data element's value: the last 4096 bytes (8-bit)
    path.write_bytes(data[: pixel_start - 12])  # cut inside the PixelData element header
    with pytest.raises(RadiographReadError, match=r"ends before its pixel data \(\d+ bytes for a 64 x 64 image\)"):
        load_radiograph(path)
    path.write_bytes(data[: pixel_start + 100])  # cut inside the pixel data
    with pytest.raises(RadiographReadError, match="cannot decode the DICOM pixel data"):
        load_radiograph(path)
