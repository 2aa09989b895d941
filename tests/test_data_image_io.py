"""Radiograph reading and the method.md 1 image pipeline (bundle/data/image_io.py).

Files are written in the test by PIL, pydicom and nibabel; pydicom's and nibabel's shipped sample files are read
too. Expected values are computed independently with numpy from the DICOM standard's formulas (rescale, the linear
VOI window of PS3.3 C.11.2.1.2.1, MONOCHROME1 inversion), not by the code under test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.data.image_io import (
    LoadRadiographd,
    RadiographReadError,
    load_label_map,
    load_radiograph,
    radiograph_transforms,
)


def gradient(h=20, w=30, dtype=np.uint8, top=255):
    """A non-square image with a distinct value at each (row, column) and one marked pixel."""
    arr = (np.arange(h)[:, None] * w + np.arange(w)[None, :]) * (top // (h * w))
    arr[3, 25] = top
    return arr.astype(dtype)


# ----------------------------------------------------------------------------------------------- PNG / JPG
def test_png_8_bit_keeps_orientation_and_scales_by_255(tmp_path):
    arr = gradient()
    Image.fromarray(arr, mode="L").save(tmp_path / "a.png")
    out = load_radiograph(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (20, 30)  # [H, W], axis 0 = rows
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)
    assert out[3, 25] == 1.0


def test_png_16_bit_scales_by_65535(tmp_path):
    arr = gradient(dtype=np.uint16, top=65535)
    Image.fromarray(arr).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode.startswith("I")
    np.testing.assert_allclose(load_radiograph(tmp_path / "b.png"), arr / 65535.0, atol=1e-7)


def test_jpg_and_rgb_png(tmp_path):
    arr = gradient()
    Image.fromarray(arr, mode="L").save(tmp_path / "c.jpg", quality=95)
    np.testing.assert_allclose(load_radiograph(tmp_path / "c.jpg"), arr / 255.0, atol=0.06)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "d.png")
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0
    np.testing.assert_allclose(load_radiograph(tmp_path / "d.png"), expected, atol=1 / 255)


# ----------------------------------------------------------------------------------------------- DICOM
def write_dicom(
    path, stored: np.ndarray, photometric="MONOCHROME2", slope=None, intercept=None, window=None, voi_lut=None
):
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, table = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [len(table), first, 16])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(v) for v in table])  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def dicom_window(x, center, width):
    """PS3.3 C.11.2.1.2.1 linear window to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


STORED = (np.arange(24 * 16).reshape(24, 16) * 10).astype(np.uint16)  # 0 .. 3830, 12-bit


def test_dicom_rescale_then_window(tmp_path):
    # The window is in rescaled (modality) units: a reader that skipped the rescale would get a different image.
    path = write_dicom(tmp_path / "w.dcm", STORED, slope=2, intercept=-1000, window=(2000, 3000))
    expected = dicom_window(STORED * 2.0 - 1000.0, 2000, 3000)
    assert expected.min() == 0.0 and expected.max() == 1.0  # both window ends reached: min-max is the identity
    out = load_radiograph(path)
    assert out.shape == (24, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_dicom_monochrome1_is_inverted(tmp_path):
    mono2 = load_radiograph(write_dicom(tmp_path / "m2.dcm", STORED, window=(1500, 2000)))
    mono1 = load_radiograph(write_dicom(tmp_path / "m1.dcm", STORED, "MONOCHROME1", window=(1500, 2000)))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # with no VOI at all: min-max of the stored values, bright where the stored value is LOW
    plain = load_radiograph(write_dicom(tmp_path / "m1b.dcm", STORED, "MONOCHROME1"))
    np.testing.assert_allclose(plain, 1.0 - STORED / STORED.max(), atol=1e-6)
    assert plain[0, 0] == 1.0


def test_dicom_voi_lut_sequence(tmp_path):
    # a LUT from stored value 1000: 0 below, a square-root curve up to 4095 on 3000 entries, last entry above
    table = np.round(np.sqrt(np.arange(3000) / 2999) * 4095).astype(int)
    path = write_dicom(tmp_path / "lut.dcm", STORED, voi_lut=(1000, table))
    index = np.clip(STORED.astype(int) - 1000, 0, 2999)
    looked_up = table[index].astype(float)
    expected = (looked_up - looked_up.min()) / (looked_up.max() - looked_up.min())  # then the documented min-max
    assert 0.9 < looked_up.max() / 4095 < 1.0  # the image does not reach the LUT's top: min-max matters here
    np.testing.assert_allclose(load_radiograph(path), expected, atol=1e-6)


def test_pydicom_sample_files():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm", download=False)
    ds = dcmread(ct)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(load_radiograph(ct), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    mr = get_testdata_file("MR_small.dcm", download=False)
    ds = dcmread(mr)
    windowed = dicom_window(ds.pixel_array.astype(float), float(ds.WindowCenter), float(ds.WindowWidth))
    expected = (windowed - windowed.min()) / (windowed.max() - windowed.min())
    np.testing.assert_allclose(load_radiograph(mr), expected, atol=1e-4)


# ----------------------------------------------------------------------------------------------- NIfTI
def test_nifti_axis_convention_and_singleton_axes(tmp_path):
    import nibabel as nib

    arr = gradient().astype(np.int16)  # [H=20, W=30]
    nib.save(nib.Nifti1Image(arr.T[:, :, None], np.eye(4)), str(tmp_path / "x.nii.gz"))  # voxel (x, y, 1)
    out = load_radiograph(tmp_path / "x.nii.gz")
    assert out.shape == (20, 30)
    np.testing.assert_allclose(out, (arr - arr.min()) / (arr.max() - arr.min()), atol=1e-6)
    assert out[3, 25] == 1.0


def test_nibabel_sample_volume_is_rejected_by_name():
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    if not os.path.isfile(path):
        pytest.skip("nibabel sample data not installed")
    with pytest.raises(RadiographReadError, match="anatomical.nii.*non-singleton"):
        load_radiograph(path)


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_radiograph(tmp_path / "nothere.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(RadiographReadError, match="junk.png"):
        load_radiograph(tmp_path / "junk.png")
    good = write_dicom(tmp_path / "t.dcm", STORED)
    (tmp_path / "trunc.dcm").write_bytes(good.read_bytes()[:400])
    with pytest.raises(RadiographReadError, match="trunc.dcm"):
        load_radiograph(tmp_path / "trunc.dcm")
    (tmp_path / "bad.nii").write_bytes(b"not a nifti header")
    with pytest.raises(RadiographReadError, match="bad.nii"):
        load_radiograph(tmp_path / "bad.nii")


def test_load_radiographd_names_the_item(tmp_path):
    with pytest.raises(FileNotFoundError, match="item 17_0.*gone.png"):
        LoadRadiographd("image")({"image": str(tmp_path / "gone.png"), "id": "17_0"})
    (tmp_path / "junk.jpg").write_bytes(b"garbage")
    with pytest.raises(RadiographReadError, match="item 18_0.*junk.jpg"):
        LoadRadiographd("image")({"image": str(tmp_path / "junk.jpg"), "id": "18_0"})


def test_label_map_keeps_class_ids(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 4
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    out = load_label_map(tmp_path / "m.png")
    assert out.dtype == np.int64 and (out == mask).all()


# ----------------------------------------------------------------------------------------------- pipeline
def run_pipeline(img: np.ndarray, train: bool, image_size=64, crop_size=48, seed=0):
    from monai.transforms import Compose

    pipeline = Compose(radiograph_transforms(("image",), image_size, crop_size, train=train))
    pipeline.set_random_state(seed)
    return pipeline({"image": torch.from_numpy(img)[None]})["image"]


def test_pipeline_resizes_keeping_aspect_pads_with_black_and_centre_crops(tmp_path):
    # a tall constant image (H=100, W=50): resized to 64 x 32, padded to 64 x 64 with 16 black columns each side
    img = np.full((100, 50), 0.75, np.float32)
    out = run_pipeline(img, train=False)
    assert out.shape == (1, 48, 48) and out.dtype == torch.float32
    # centre crop 48 of 64 starts at 8: columns 0..7 and 40..47 are padding (-1); 8..39 are the image (0.75 -> 0.5)
    np.testing.assert_allclose(out[0, :, :8].numpy(), -1.0)
    np.testing.assert_allclose(out[0, :, 40:].numpy(), -1.0)
    np.testing.assert_allclose(out[0, :, 8:40].numpy(), 0.5, atol=1e-5)


def test_pipeline_intensity_range_and_random_crop(tmp_path):
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1.0
    out = run_pipeline(img, train=False)
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0
    crops = {tuple(run_pipeline(img, train=True, seed=s)[0, 0, :].numpy().round(3)) for s in range(6)}
    assert len(crops) > 1  # different offsets for different seeds
    again = run_pipeline(img, train=True, seed=3)
    assert torch.equal(again, run_pipeline(img, train=True, seed=3))  # and reproducible


def test_full_load_and_transform_from_file(tmp_path):
    from monai.transforms import Compose

    Image.fromarray(gradient(200, 120), mode="L").save(tmp_path / "r.png")
    pipeline = Compose([LoadRadiographd("image")] + radiograph_transforms(("image",), 256, 224, train=False))
    out = pipeline({"image": str(tmp_path / "r.png"), "id": "r"})["image"]
    assert out.shape == (1, 224, 224) and -1.0 <= float(out.min()) and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="crop_size"):
        radiograph_transforms(image_size=64, crop_size=96)
