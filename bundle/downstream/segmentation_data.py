"""Segmentation data for the transfer protocol (method.md 5): masks, their classes, the spatial pipeline, balancing.

Masks are the manifests' label-map PNGs (`{"image", "label": mask path, "id"}`): SIIM and RSNA write 0 / 1, the demo
writes class ids of `meta.class_names` (0 = background) for its mask findings (`meta.mask_classes`). The allowed values
come from the manifest's meta (`mask_values` keys, or 0 plus `mask_classes` ids); anything else is an error naming the
item, the file and the values (a 0 / 255 mask is refused, not silently read as two classes).

Channels (`class_mode`): "binary" -> one channel, 1 where the pixel holds any foreground class (or one of
`foreground`, when given); "per_class" -> one channel per foreground class, in `mask_classes` order. The model has one
sigmoid output per channel.

Spatial pipeline (method.md 1, masks through the same spatial transforms, nearest neighbour): resize keeping the
aspect ratio (long side image_size; the image by area averaging, the mask by nearest), zero pad to a square; training:
random crop crop_size, then MGCA's augmentation (albumentations ShiftScaleRotate(shift 0, scale 0.1, rotate 10, p 0.5,
constant border) as MONAI RandAffined: bilinear image, nearest mask, zero padding); evaluation: the whole padded
image, padded further to a multiple of `divisible` (32 for a ResNet U-Net), so every pixel is scored and the inverse
(Invertd) restores the original size. Intensity [0, 1] -> [-1, 1] last (padding is black).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    DivisiblePadd,
    EnsureTyped,
    MapTransform,
    RandAffined,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRanged,
    SpatialPadd,
)

from bundle.data.image_io import RadiographReadError, load_label_map
from bundle.data.label_fractions import seeded_order_key

CLASS_MODES = ("binary", "per_class")


class SegmentationDataError(ValueError):
    """A segmentation item is unusable; the message names the item and the reason."""


def mask_class_ids(meta: Mapping) -> dict[str, int]:
    """Foreground classes of a segmentation manifest: {name: id} (id 0 is always background)."""
    if meta.get("mask_classes"):
        classes = {str(k): int(v) for k, v in meta["mask_classes"].items()}
    elif meta.get("mask_values"):
        classes = {str(name): int(v) for v, name in meta["mask_values"].items() if int(v) != 0}
    else:
        classes = {"foreground": 1}  # no description: a plain 0 / 1 mask
    if 0 in classes.values():
        raise SegmentationDataError(f"mask classes {classes}: id 0 is the background")
    return dict(sorted(classes.items(), key=lambda kv: kv[1]))


def segmentation_channels(
    meta: Mapping, class_mode: str = "binary", foreground: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """{channel name: mask ids that make it 1}: one "foreground" channel (binary) or one per class (per_class)."""
    if class_mode not in CLASS_MODES:
        raise ValueError(f"unknown class_mode {class_mode!r}; choose one of {CLASS_MODES}")
    classes = mask_class_ids(meta)
    if foreground:
        unknown = sorted(set(foreground) - set(classes))
        if unknown:
            raise ValueError(f"foreground classes {unknown} are not mask classes of this manifest ({sorted(classes)})")
        classes = {k: v for k, v in classes.items() if k in set(foreground)}
    if class_mode == "per_class":
        return {name: [cid] for name, cid in classes.items()}
    name = next(iter(classes)) if len(classes) == 1 else "foreground"
    return {name: sorted(classes.values())}


class LoadSegmentationMaskd(MapTransform):
    """Mask path -> MetaTensor [C, H, W] float32 in {0, 1} (one channel per entry of `channels`).

    Checks, each naming the item: the mask file exists and is a one-channel label map, its size equals the image's
    (the image must be loaded first: its `spatial_shape`), and every value is background or a known class id.
    """

    def __init__(
        self,
        channels: Mapping[str, Sequence[int]],
        allowed_values: Sequence[int],
        keys="label",
        image_key: str = "image",
    ) -> None:
        super().__init__(keys)
        self.channels = {k: [int(i) for i in v] for k, v in channels.items()}
        self.allowed = np.array(sorted({0, *map(int, allowed_values)}))
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        item = d.get("id", "?")
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise SegmentationDataError(f"item {item}: '{key}' is {path!r}, expected a mask file path")
            try:
                mask = load_label_map(path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"item {item}: {e}") from e
            except RadiographReadError as e:
                raise SegmentationDataError(f"item {item}: {e}") from e
            image = d.get(self.image_key)
            if image is not None:
                image_shape = tuple(int(s) for s in image.shape[-2:])
                if tuple(mask.shape) != image_shape:
                    raise SegmentationDataError(
                        f"item {item}: mask {path} is {mask.shape[0]}x{mask.shape[1]} "
                        f"(rows x columns), its image is {image_shape[0]}x{image_shape[1]}"
                    )
            values = np.unique(mask)
            bad = values[~np.isin(values, self.allowed)]
            if bad.size:
                raise SegmentationDataError(
                    f"item {item}: mask {path} holds values {bad.tolist()[:10]} that are not "
                    f"class ids of this manifest {self.allowed.tolist()} (a 0/255 mask must "
                    "be stored as 0/1)"
                )
            stacked = np.stack([np.isin(mask, ids) for ids in self.channels.values()]).astype(np.float32)
            d[key] = MetaTensor(
                torch.from_numpy(stacked),
                meta={"filename_or_obj": os.fspath(path), "spatial_shape": np.array(mask.shape)},
            )
        return d


def segmentation_transforms(
    keys: Sequence[str] = ("image", "label"),
    image_size: int = 224,
    crop_size: int = 224,
    train: bool = True,
    divisible: int = 32,
    augment: bool = True,
    aug_prob: float = 0.5,
    scale_limit: float = 0.1,
    rotate_degrees: float = 10.0,
    shift_limit: float = 0.0,
    intensity_range: tuple[float, float] = (-1.0, 1.0),
) -> list:
    """Spatial and intensity transforms after loading (see the module doc). keys[0] is the image; the others are
    masks (nearest neighbour everywhere). shift_limit is a fraction of the crop side (MGCA: 0)."""
    if crop_size > image_size:
        raise ValueError(f"crop_size ({crop_size}) must not exceed image_size ({image_size})")
    keys = list(keys)
    image_key, n_masks = keys[0], len(keys) - 1
    modes_resize = ["area"] + ["nearest"] * n_masks
    out = [
        Resized(keys, spatial_size=int(image_size), size_mode="longest", mode=modes_resize),
        SpatialPadd(keys, spatial_size=(image_size, image_size), method="symmetric", mode="constant"),
    ]
    if train:
        out.append(RandSpatialCropd(keys, roi_size=(crop_size, crop_size), random_size=False))
        if augment and aug_prob > 0:
            shift = float(shift_limit) * crop_size
            out.append(
                RandAffined(
                    keys,
                    prob=aug_prob,
                    rotate_range=math.radians(rotate_degrees),
                    scale_range=(scale_limit, scale_limit),
                    translate_range=(shift, shift) if shift else None,
                    mode=["bilinear"] + ["nearest"] * n_masks,
                    padding_mode="zeros",
                )
            )
    elif divisible and divisible > 1:
        out.append(DivisiblePadd(keys, k=int(divisible), method="symmetric", mode="constant"))
    out += [
        ScaleIntensityRanged(
            image_key, a_min=0.0, a_max=1.0, b_min=float(intensity_range[0]), b_max=float(intensity_range[1]), clip=True
        ),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]
    return out


def mask_is_positive(path: str) -> bool:
    return bool(np.any(load_label_map(path) != 0))


def balance_positives(items: Sequence[dict], seed: int = 0, label_key: str = "label") -> list[dict]:
    """MGCA's SIIM training balance: every item with a non-empty mask plus as many of the empty ones (a seeded,
    machine-independent choice); order of `items` kept. For manifests prepared without balancing."""
    positive = [mask_is_positive(item[label_key]) for item in items]
    n_pos = sum(positive)
    negatives = sorted(
        (str(it["id"]) for it, p in zip(items, positive) if not p), key=lambda i: seeded_order_key(seed, i)
    )
    kept = set(negatives[:n_pos])
    return [it for it, p in zip(items, positive) if p or str(it["id"]) in kept]


def check_training_items(items: Sequence[dict], fraction: float, where: str = "training split") -> list[dict]:
    """Fail early, with the reason, on an empty training list or an item without a mask entry."""
    items = list(items)
    if not items:
        raise SegmentationDataError(
            f"{where}: no training items for label fraction {fraction} (empty split after the fraction / balancing)"
        )
    for item in items:
        if "label" not in item:
            raise SegmentationDataError(f"{where}: item {item.get('id', '?')} has no 'label' (mask path)")
    return items


def segmentation_training_items(
    manifest: str, fraction: float, dataset_dir: str | None = None, balance: bool = False, seed: int = 0
) -> list[dict]:
    """The training items of label fraction `fraction` (manifest meta.fractions), optionally balanced."""
    from bundle.data.label_fractions import load_fraction

    items = load_fraction(manifest, fraction, dataset_dir=dataset_dir)
    check_training_items(items, fraction, f"{manifest} training")
    if balance:
        items = balance_positives(items, seed)
    return check_training_items(items, fraction, f"{manifest} training")


def inference_datalist(image_path) -> list[dict]:
    """{"image": path} items for one file, a folder (its PNG/JPG/DICOM/NIfTI files, sorted) or a list of files."""
    from bundle.data.image_io import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES

    paths = [image_path] if image_path is None or isinstance(image_path, (str, os.PathLike)) else list(image_path)
    out = []
    for p in paths:
        p = os.fspath(p) if p is not None else ""
        if p and os.path.isdir(p):
            names = sorted(
                n for n in os.listdir(p) if n.lower().endswith(PIL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES)
            )
            out += [{"image": os.path.join(p, n)} for n in names]
        elif p and os.path.isfile(p):
            out.append({"image": p})
        else:
            raise FileNotFoundError(f"inference input not found: {p or None} (set --image_path to a file or a folder)")
    if not out:
        raise FileNotFoundError(f"no images to segment in {image_path!r}")
    return out
