"""Reading 2D radiographs (PNG/JPG 8/16-bit, DICOM, NIfTI) into one channel float in [0, 1], and the method.md 1
image pipeline (resize keeping aspect, zero pad to square, random/centre crop, intensity to [-1, 1]).

Conventions used everywhere in the bundle: arrays are [C, H, W] (axis 0 after the channel = y = rows); 0 is black and
1 is white in the DISPLAY sense (dense structures such as bone are bright), whatever the file stored:
- PNG/JPG: 8-bit / 255, 16-bit / 65535 (the file defines its own display range); colour is converted to luma.
- DICOM (pydicom): stored values -> modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) -> VOI LUT
  (VOI LUT Sequence or Window Center/Width, where present) -> linear min-max to [0, 1] -> MONOCHROME1 inverted.
- NIfTI (nibabel): voxel axis 0 is x (columns), axis 1 is y (rows), as nibabel/ITK write them; the array is transposed
  to [H, W]; singleton axes are dropped; then linear min-max to [0, 1].
A constant image maps to all zeros. Missing files raise FileNotFoundError, unreadable ones RadiographReadError;
both name the file (LoadRadiographd adds the item id).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    EnsureTyped,
    MapTransform,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
    SpatialPadd,
)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class RadiographReadError(ValueError):
    """An image file exists but cannot be read as a 2D radiograph; the message names the file and the reason."""


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601-2, the weights PIL's convert("L") uses
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# ----------------------------------------------------------------------------------------------- per format
def read_pil(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                return np.asarray(im, dtype=np.float64).astype(np.float32) / 65535.0
            if mode == "I":
                arr = np.asarray(im)
                if arr.min() < 0 or arr.max() > 65535:
                    raise RadiographReadError(f"{path}: 32-bit integer image with values outside 0..65535")
                return arr.astype(np.float32) / 65535.0
            if mode == "F":
                return _minmax(np.asarray(im))
            if mode == "LA":
                im = im.getchannel("L")
            elif mode != "L":
                im = im.convert("L")  # 1, P, RGB, RGBA, CMYK, YCbCr: luma
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RadiographReadError(f"{path}: not a readable PNG/JPG image ({e})") from e


def read_dicom(path: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as e:
        raise RadiographReadError(f"{path}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:  # an image header: the data were cut off (half-downloaded file)
            raise RadiographReadError(
                f"{path}: DICOM file ends before its pixel data ({os.path.getsize(path)} bytes "
                f"for a {ds.Rows} x {ds.Columns} image): truncated, download it again"
            )
        raise RadiographReadError(
            f"{path}: DICOM file without pixel data (no image attributes either: not an image object)"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder plugin, truncated data: pydicom raises several types
        raise RadiographReadError(f"{path}: cannot decode the DICOM pixel data ({type(e).__name__}: {e})") from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        raise RadiographReadError(f"{path}: {frames}-frame DICOM; a radiograph has one frame")
    if samples == 3:
        # colour DICOM (secondary capture): no modality/VOI LUTs apply; pydicom already returns RGB
        return _minmax(_luma(arr.astype(np.float64)))
    if arr.ndim != 2:
        raise RadiographReadError(f"{path}: DICOM pixel array of shape {arr.shape}, expected 2D")
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)  # returns arr unchanged when the file has no VOI LUT / window
    out = _minmax(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out  # MONOCHROME1: the minimum stored value is displayed white
    return out.astype(np.float32)


def read_nifti(path: str) -> np.ndarray:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(path)
        arr = np.asarray(img.dataobj, dtype=np.float64)
    except (ImageFileError, OSError, EOFError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RadiographReadError(f"{path}: not a readable NIfTI file ({e})") from e
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise RadiographReadError(
            f"{path}: NIfTI image of shape {img.shape}; a radiograph needs exactly two non-singleton axes"
        )
    return _minmax(arr.T)  # nibabel axis 0 is x (columns): transpose to [rows, columns]


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def load_radiograph(path: str | os.PathLike) -> np.ndarray:
    """A 2D radiograph as float32 [H, W] in [0, 1] (display convention: 1 = white), see the module doc."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    lower = path.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        arr = read_nifti(path)
    elif lower.endswith(DICOM_SUFFIXES) or _is_dicom_file(path):
        arr = read_dicom(path)
    elif lower.endswith(PIL_SUFFIXES):
        arr = read_pil(path)
    else:
        arr = read_pil(path)  # unknown suffix: let PIL identify it (it raises a named error otherwise)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise RadiographReadError(f"{path}: image of shape {arr.shape} is not a 2D radiograph")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def load_label_map(path: str | os.PathLike) -> np.ndarray:
    """A segmentation label map (class ids, 8/16-bit PNG) as int64 [H, W], values unchanged (no scaling)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
                raise RadiographReadError(f"{path}: label map of mode {im.mode}; expected one channel of class ids")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise RadiographReadError(f"{path}: not a readable label-map image ({e})") from e


# ----------------------------------------------------------------------------------------------- MONAI transforms
class LoadRadiographd(MapTransform):
    """Replace each path under `keys` by a MetaTensor [1, H, W] float32 in [0, 1] (load_radiograph).

    Errors name the item (its "id" when present) and the file.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                arr = load_radiograph(path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"item {d.get('id', '?')}: {e}") from e
            except RadiographReadError as e:
                raise RadiographReadError(f"item {d.get('id', '?')}: {e}") from e
            d[key] = MetaTensor(
                torch.from_numpy(arr)[None],
                meta={"filename_or_obj": os.fspath(path), "spatial_shape": np.array(arr.shape)},
            )
        return d


def radiograph_transforms(
    keys: Sequence[str] = ("image",),
    image_size: int = 256,
    crop_size: int = 224,
    train: bool = True,
    resize_mode: str = "area",
    anti_aliasing: bool = False,
    intensity_range: tuple[float, float] = (-1.0, 1.0),
) -> list:
    """method.md 1 on [1, H, W] images in [0, 1]: resize keeping the aspect ratio (long side image_size), zero pad
    to image_size x image_size (centred), random (train) / centre (eval) crop crop_size, [0, 1] -> intensity_range.
    Output [1, crop_size, crop_size] float32. The random crop is the only random step (CacheDataset caches the rest).
    resize_mode "area" averages the source pixels under each output pixel: the right filter for the usual large
    downsampling of radiographs (no aliasing, no darkened borders); it behaves like "nearest" when upsampling, where
    resize_mode="bilinear" is better.
    """
    if crop_size > image_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed image_size ({image_size})")
    keys = list(keys)
    crop = (
        RandSpatialCropd(keys, roi_size=(crop_size, crop_size), random_size=False)
        if train
        else CenterSpatialCropd(keys, roi_size=(crop_size, crop_size))
    )
    return [
        Resized(keys, spatial_size=int(image_size), size_mode="longest", mode=resize_mode, anti_aliasing=anti_aliasing),
        SpatialPadd(keys, spatial_size=(image_size, image_size), method="symmetric", mode="constant"),
        crop,
        ScaleIntensityRanged(
            keys, a_min=0.0, a_max=1.0, b_min=float(intensity_range[0]), b_max=float(intensity_range[1]), clip=True
        ),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]
