"""Writers of small fixtures in the real dataset formats (shared by tests/test_prepare_*.py), and their own checks.

DICOMs are real files written with pydicom (explicit VR little endian, MONOCHROME2, 8-bit), JPG/PNG with Pillow.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A minimal but complete 8-bit MONOCHROME2 DICOM image [rows, columns]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", path.stem
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_gray(path: Path, height: int, width: int, value: int = 100) -> Path:
    """An 8-bit grey JPG or PNG (format from the suffix) of the given size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width), value, dtype=np.uint8)
    pixels[: height // 2] = 255 - value  # not uniform, so an orientation error would be visible
    Image.fromarray(pixels).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def run_script(dataset: str, *args: str) -> int:
    """Run scripts/prepare_<dataset>.py as `python scripts/... args` does (in this process) and return its exit code."""
    script = BUNDLE_ROOT / "scripts" / f"prepare_{dataset}.py"
    saved = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    raise AssertionError(f"{script} did not exit through sys.exit")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_of_ids(ids) -> str:
    """Independent statement of the summary checksum: SHA-256 of the sorted ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def test_write_dicom_reads_back_with_pydicom(tmp_path):
    pixels = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    ds = pydicom.dcmread(write_dicom(tmp_path / "a" / "x.dcm", pixels))
    assert (ds.Rows, ds.Columns) == (6, 4)
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_write_gray_has_rows_and_columns_in_order(tmp_path):
    image = read_png(write_gray(tmp_path / "x.png", 10, 7))
    assert image.shape == (10, 7)
    assert image[0, 0] == 155 and image[-1, 0] == 100


def test_run_script_reports_a_bad_source_as_exit_code_2(tmp_path, capsys):
    pytest.importorskip("bundle.data.manifest")
    assert run_script("covidx", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2


@pytest.mark.parametrize("dataset", ["mimic_cxr", "chexpert", "rsna", "siim", "covidx", "object_cxr"])
def test_scripts_start_as_separate_processes_without_pythonpath(dataset):
    """`python scripts/prepare_<dataset>.py --help` works from anywhere: the script puts the bundle root on sys.path."""
    import os
    import subprocess

    if dataset == "mimic_cxr":  # its module imports the report parser of bundle.data.reports
        pytest.importorskip("bundle.data.reports")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(BUNDLE_ROOT / "scripts" / f"prepare_{dataset}.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--src" in result.stdout and "--out" in result.stdout and "--strict" in result.stdout
