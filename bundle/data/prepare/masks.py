"""Masks and image headers for the DICOM datasets (RSNA, SIIM).

Masks are written as 8-bit PNG label maps of the stored image's size: 0 = background, 1 = the finding (the class-id
convention of the demo data). Box convention: [x1, y1, x2, y2] in pixels of the stored image, x = column, y = row,
pixel c covering [c, c+1); a box covers the pixels from floor(x1) to ceil(x2) - 1 (and the same in y).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image


def dicom_size(path: Path) -> tuple[int, int]:
    """(rows, columns) of a DICOM image from its header, without decoding the pixels."""
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    if "Rows" not in header or "Columns" not in header:
        raise ValueError("no Rows/Columns in the DICOM header")
    return int(header.Rows), int(header.Columns)


def image_size(path: Path) -> tuple[int, int]:
    """(rows, columns) of a PNG/JPG from its header (PIL opens lazily)."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def rasterise_boxes(boxes: list[list[float]], height: int, width: int) -> np.ndarray:
    """uint8 [height, width] mask with 1 inside any of the [x1, y1, x2, y2] boxes (clipped to the image)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        c1, c2 = max(0, math.floor(x1)), min(width, math.ceil(x2))
        r1, r2 = max(0, math.floor(y1)), min(height, math.ceil(y2))
        mask[r1:r2, c1:c2] = 1
    return mask


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    """Save a label map as 8-bit PNG (lossless; fast compression level, masks compress well anyway)."""
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8, got {mask.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path, compress_level=1)
