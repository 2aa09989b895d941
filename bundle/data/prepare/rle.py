"""The SIIM-ACR Pneumothorax run-length encoding ("relative" RLE of the competition's mask_functions.py).

The mask is flattened column by column (x outer, y inner: index = x * height + y, i.e. Fortran order of the
[height, width] array). The string is pairs "start length": the first start counts from pixel 0, every later start
counts from the end of the previous run. "-1" means an empty mask. Masks here are [H, W] arrays (axis 0 = y).
"""

from __future__ import annotations

import numpy as np

EMPTY = "-1"


class RLEError(ValueError):
    """A run-length string that cannot be decoded onto the given image size."""


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one relative RLE string to a uint8 mask [height, width] with 1 inside the runs."""
    text = rle.strip()
    if text == EMPTY:
        return np.zeros((height, width), dtype=np.uint8)
    try:
        values = np.array([int(token) for token in text.split()], dtype=np.int64)
    except ValueError:
        raise RLEError(f"non-integer token in RLE {text[:40]!r}") from None
    if values.size == 0 or values.size % 2:
        raise RLEError(f"RLE must hold start/length pairs, got {values.size} number(s)")
    starts, lengths = values[0::2], values[1::2]
    if (starts < 0).any() or (lengths <= 0).any():
        raise RLEError("RLE has a negative start or a non-positive length")
    # absolute start of run k = sum of starts[0..k] + sum of lengths[0..k-1]
    absolute = np.cumsum(starts) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ends = absolute + lengths
    if ends[-1] > height * width:
        raise RLEError(f"RLE runs end at pixel {int(ends[-1])}, beyond the {height}x{width} image")
    flat = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(flat, absolute, 1)
    np.add.at(flat, ends, -1)
    mask_flat = (np.cumsum(flat[:-1]) > 0).astype(np.uint8)
    return mask_flat.reshape(width, height).T.copy()  # column-major: flat index = x * height + y


def rle_encode(mask: np.ndarray) -> str:
    """Encode a [H, W] mask (non-zero = inside) in the relative format; "-1" for an empty mask."""
    flat = (np.asarray(mask) != 0).T.reshape(-1).astype(np.int8)  # x outer, y inner
    if not flat.any():
        return EMPTY
    padded = np.concatenate(([0], flat, [0]))
    changes = np.flatnonzero(np.diff(padded))
    starts, ends = changes[0::2], changes[1::2]
    lengths = ends - starts
    relative = starts - np.concatenate(([0], ends[:-1]))
    return " ".join(f"{int(s)} {int(n)}" for s, n in zip(relative, lengths))


def decode_union(rles: list[str], height: int, width: int) -> np.ndarray:
    """Several rows of one image are several objects: their masks are united."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        mask |= rle_decode(rle, height, width)
    return mask
