"""Sentence grounding from the cross-modal attention: the A1 weights of a sentence over the image tokens (method.md
4.2) as a heat map on the radiograph, and how well it points at the finding the sentence names.

Map: A1 [P] -> the encoder's token grid [h, w] (row-major, as the encoders flatten their last feature map) ->
bilinear upsampling to the network input (crop_size x crop_size) -> the inverse of the evaluation preprocessing
(centre crop, symmetric pad, aspect-preserving resize: MONAI's Invertd on the image's applied operations) -> a map at
the stored image's size, 0 where the crop removed the image border.

Scores, per (image, sentence, ground-truth region) at the stored image's size:
- pointing game: the map's maximum lies inside the region (on a plateau: the maximal pixel nearest its centroid);
- IoU of the map thresholded at half its range ((m - min) / (max - min) >= 0.5) with the region;
- mass in region: the share of the map's (non-negative) mass inside the region.
Baselines on the same regions: a uniform map (pointing = the region's area fraction, the expected hit of a random
point; IoU = the area fraction; mass = the area fraction) and a centre prior (an isotropic Gaussian at the image
centre, sigma = a quarter of the shorter side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def token_grid(num_tokens: int) -> tuple[int, int]:
    """The square token grid of the encoders (ResNet last feature map, ViT patches)."""
    side = math.isqrt(int(num_tokens))
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} image tokens do not form a square grid")
    return side, side


def attention_to_input(attention: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """A1 rows [N, P] -> maps [N, H, W] at the network input size: the token at grid cell (r, c) covers the pixel
    block [r*H/h, (r+1)*H/h) x [c*W/w, (c+1)*W/w) (bilinear between block centres)."""
    h, w = token_grid(attention.shape[-1])
    grid = attention.float().reshape(-1, 1, h, w)
    return F.interpolate(grid, size=tuple(int(s) for s in input_size), mode="bilinear", align_corners=False)[:, 0]


def box_region(boxes: Sequence[Sequence[float]], shape: Sequence[int]) -> np.ndarray:
    """Union of [x1, y1, x2, y2] pixel boxes (x = column, y = row, x2 / y2 one past the last pixel) as a bool
    mask of `shape` (rows, columns)."""
    region = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        r1, r2 = max(0, int(math.floor(y1))), min(region.shape[0], int(math.ceil(y2)))
        c1, c2 = max(0, int(math.floor(x1))), min(region.shape[1], int(math.ceil(x2)))
        region[r1:r2, c1:c2] = True
    return region


def normalise(heat: np.ndarray) -> np.ndarray:
    low, high = float(heat.min()), float(heat.max())
    if high - low <= 0:
        return np.zeros_like(heat, dtype=np.float64)
    return (heat - low) / (high - low)


def pointing_location(heat: np.ndarray) -> tuple[int, int]:
    """The map's maximum; on a plateau (an upsampled token grid is flat near its borders) the maximal pixel nearest
    the plateau's centroid, not its first pixel in row-major order (which would favour the top-left corner)."""
    top = heat.max()
    rows, cols = np.nonzero(heat >= top - 1e-9 * max(1.0, abs(float(top))))
    k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[k]), int(cols[k])


def pointing_hit(heat: np.ndarray, region: np.ndarray) -> float:
    """1.0 when the map's maximum (pointing_location) lies inside the region, else 0.0."""
    _check(heat, region)
    return float(region[pointing_location(heat)])


def thresholded_iou(heat: np.ndarray, region: np.ndarray, threshold: float = 0.5) -> float:
    _check(heat, region)
    selected = normalise(heat) >= threshold
    union = np.logical_or(selected, region).sum()
    return float(np.logical_and(selected, region).sum() / union) if union else 0.0


def mass_in_region(heat: np.ndarray, region: np.ndarray) -> float:
    _check(heat, region)
    heat = np.clip(heat, 0, None)
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else float(region.mean())


def grounding_scores(heat: np.ndarray, region: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return {
        "pointing": pointing_hit(heat, region),
        "iou": thresholded_iou(heat, region, threshold),
        "mass": mass_in_region(heat, region),
    }


def uniform_scores(region: np.ndarray) -> dict[str, float]:
    """The uniform map's expected scores: a random point hits with the area fraction; thresholding keeps the
    whole image, so IoU and mass are the area fraction too."""
    area = float(region.mean())
    return {"pointing": area, "iou": area, "mass": area}


def centre_prior(shape: Sequence[int]) -> np.ndarray:
    rows, cols = (int(s) for s in shape)
    sigma = min(rows, cols) / 4.0
    y = np.arange(rows) - (rows - 1) / 2.0
    x = np.arange(cols) - (cols - 1) / 2.0
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def _check(heat: np.ndarray, region: np.ndarray) -> None:
    if heat.shape != region.shape:
        raise ValueError(f"map {heat.shape} and region {region.shape} differ in shape")
    if not region.any():
        raise ValueError("empty ground-truth region: a grounding case needs at least one pixel")


class InputToImage:
    """map [1, h, w] at the network input + the preprocessed image (a MetaTensor carrying its applied operations)
    -> numpy [H, W] at the stored image's size, by MONAI's Invertd over the evaluation preprocessing (bilinear
    for the resize; the inverse of the centre crop pads with 0)."""

    def __init__(self, preprocessing) -> None:
        from monai.transforms import Invertd

        self.invert = Invertd(keys="map", transform=preprocessing, orig_keys="image", nearest_interp=False)
        self.invert_nearest = Invertd(keys="map", transform=preprocessing, orig_keys="image", nearest_interp=True)

    def __call__(self, heat: torch.Tensor, image, nearest: bool = False) -> np.ndarray:
        from monai.data import MetaTensor

        invert = self.invert_nearest if nearest else self.invert
        out = invert({"image": image, "map": MetaTensor(heat.float())})["map"]
        return np.asarray(out.detach().cpu())[0].astype(np.float64)


def token_index_map(num_tokens: int, input_size: Sequence[int]) -> torch.Tensor:
    """[1, H, W] at the network input: 1 + the index of the token whose block holds each pixel (row-major grid;
    0 is left for what the inverse of the crop pads)."""
    h, w = token_grid(num_tokens)
    grid = (torch.arange(num_tokens, dtype=torch.float32) + 1).reshape(1, 1, h, w)
    return F.interpolate(grid, size=tuple(int(s) for s in input_size), mode="nearest")[0]


def token_pointing(token_map: np.ndarray, token: int, region: np.ndarray) -> float:
    """1.0 when the block of `token` (at the stored image's size, token_map from token_index_map + the inverse)
    overlaps the region: the pointing game at the resolution of the token grid."""
    _check(token_map, region)
    return float(np.logical_and(token_map == token + 1, region).any())


def token_hits(token_map: np.ndarray, num_tokens: int, region: np.ndarray) -> np.ndarray:
    """[num_tokens] token_pointing of every token: 1.0 where its block overlaps the region. Averaged over cases it
    gives the fixed-position baselines (a map that always picks token t scores the mean of column t)."""
    _check(token_map, region)
    touched = np.unique(token_map[region]).astype(np.int64)
    hits = np.zeros(num_tokens)
    hits[touched[touched > 0] - 1] = 1.0
    return hits


def centre_token(num_tokens: int) -> int:
    """The token of the grid's centre cell (row-major; the lower-right one of the four for an even side)."""
    h, w = token_grid(num_tokens)
    return (h // 2) * w + w // 2


def token_uniform(token_map: np.ndarray, num_tokens: int, region: np.ndarray) -> float:
    """Expected token_pointing of a uniformly random token: the share of tokens whose block overlaps the region."""
    return float(token_hits(token_map, num_tokens, region).mean())
