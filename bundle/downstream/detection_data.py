"""Detection data: the preparers' manifests (RSNA, Object-CXR, the demo) -> checked items -> MONAI box transforms.

Manifest convention (docs/datasets.md): "box": [[x1, y1, x2, y2], ...] in pixels of the stored image, x = column,
y = row, x2 / y2 one past the last covered column / row; "box_label" indexes meta.class_names; images without objects
have "box": [] and stay in every split (they count in training as all-background images and in the metric as
sources of false positives).

Detection classes: meta.box_classes ({name: class index}, the demo: the three box findings) when present, else
meta.class_names; they are renumbered 0..K-1 in class-index order.

Inside the workflows boxes follow MONAI's convention: coordinate k runs along image axis k, i.e. [row1, col1, row2,
col2] for a [1, H, W] image. `DetectionTargetsd` converts on load; `BoxesToManifestd` converts predictions back.

Policy for bad input (docs/detection.md):
- a box/label count mismatch, a box that is not 4 numbers, a label that is not a detection class: ManifestError
  naming the manifest, split, id and reason (the manifest is broken; never guessed around);
- a zero-area or inverted box (x2 <= x1 or y2 <= y1), a negative coordinate: bad_box="error" (default) raises the
  same way; bad_box="skip" drops the whole image (never a partial box list), counted and logged;
- a listed image that is missing: missing_image="error" (default) raises; "skip" drops it, counted and logged;
- a box reaching past the image (known only once loaded): out_of_image="error" (default) raises naming the item,
  file, image size and box; "clip" clips it to the image (MONAI's ClipBoxToImage) and drops what is left empty.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.apps.detection.transforms.array import ClipBoxToImage
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes
from monai.apps.detection.transforms.dictionary import ClipBoxToImaged, RandFlipBoxd, RandZoomBoxd
from monai.config import KeysCollection
from monai.transforms import EnsureTyped, MapTransform, Resized, ScaleIntensityRanged, SpatialPadd

from bundle.data.image_io import LoadRadiographd
from bundle.data.label_fractions import select_fraction
from bundle.data.manifest import ManifestError, load_manifest, read_manifest

logger = logging.getLogger(__name__)
POLICIES = {"missing_image": ("error", "skip"), "bad_box": ("error", "skip"), "out_of_image": ("error", "clip")}


# ----------------------------------------------------------------------------------------------- classes
def detection_classes(meta: Mapping) -> tuple[list[str], list[int]]:
    """(class names, their indices in meta.class_names) of the detection task, in class-index order."""
    if meta.get("box_classes"):
        pairs = sorted(((int(i), str(n)) for n, i in meta["box_classes"].items()))
        return [n for _, n in pairs], [i for i, _ in pairs]
    names = list(meta.get("class_names") or [])
    if not names:
        raise ManifestError("detection manifest meta has neither box_classes nor class_names")
    return names, list(range(len(names)))


def _check_policy(name: str, value: str) -> None:
    if value not in POLICIES[name]:
        raise ValueError(f"{name}={value!r}; choose one of {POLICIES[name]}")


# ----------------------------------------------------------------------------------------------- items
def _record_problem(item: Mapping, source_ids: Sequence[int]) -> tuple[str, str] | None:
    """(kind, reason) of a record's first problem; kind "broken" always raises, "bad_box" follows the policy."""
    boxes, labels = item.get("box"), item.get("box_label")
    if not isinstance(boxes, list) or not isinstance(labels, list):
        return "broken", "'box' and 'box_label' must be lists"
    if len(boxes) != len(labels):
        return "broken", f"{len(boxes)} boxes but {len(labels)} box labels"
    for n, (box, label) in enumerate(zip(boxes, labels)):
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            return "broken", f"box #{n} {box!r} is not 4 finite numbers"
        if isinstance(label, bool) or not isinstance(label, int) or label not in source_ids:
            return "broken", f"box label #{n} {label!r} is not a detection class index {list(source_ids)}"
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            return "bad_box", f"box #{n} {list(box)} has zero area or is inverted (needs x2 > x1 and y2 > y1)"
        if x1 < 0 or y1 < 0:
            return "bad_box", f"box #{n} {list(box)} has a negative coordinate"
    return None


def load_detection_items(
    manifest: str,
    split: str,
    dataset_dir: str | None = None,
    fraction: float | None = None,
    missing_image: str = "error",
    bad_box: str = "error",
) -> list[dict]:
    """The checked items of one split (training restricted to a label fraction when given), paths made absolute.

    Each item keeps the manifest's "box" / "box_label"; see the module doc for the policy on bad records.
    """
    _check_policy("missing_image", missing_image)
    _check_policy("bad_box", bad_box)
    meta = read_manifest(manifest).get("meta", {})
    _, source_ids = detection_classes(meta)
    items = load_manifest(manifest, split, dataset_dir=dataset_dir, check_files=False)
    if fraction is not None:
        if split != "training":
            raise ValueError("label fractions apply to the training split only")
        items = select_fraction(items, meta, fraction)
    kept, skipped, examples = [], Counter(), {}
    for item in items:
        where = f"{manifest}: item {item.get('id', '?')} ({split})"
        problem = _record_problem(item, source_ids)
        if problem is not None:
            kind, reason = problem
            if kind == "broken" or bad_box == "error":
                raise ManifestError(f"{where}: {reason}")
            skipped[kind] += 1
            examples.setdefault(kind, []).append(f"{item.get('id')}: {reason}")
            continue
        if not os.path.isfile(item["image"]):
            if missing_image == "error":
                raise ManifestError(f"{where}: image file not found: {item['image']}")
            skipped["missing_image"] += 1
            examples.setdefault("missing_image", []).append(f"{item.get('id')}: {item['image']}")
            continue
        kept.append(item)
    for kind, count in skipped.items():
        logger.warning(
            "%s (%s): skipped %d item(s) with %s, e.g. %s", manifest, split, count, kind, "; ".join(examples[kind][:5])
        )
    if not kept:
        raise ManifestError(f"{manifest}: no usable items in split {split!r} (skipped {dict(skipped)})")
    return kept


# ----------------------------------------------------------------------------------------------- transforms
def _spatial_affine(image) -> torch.Tensor:
    """The image's index -> original-pixel affine as a 3 x 3 matrix (MetaTensor keeps a 4 x 4 one for 2D)."""
    affine = torch.as_tensor(image.affine, dtype=torch.float64)
    if affine.shape == (4, 4):
        affine = affine[[0, 1, 3]][:, [0, 1, 3]]
    return affine


def boxes_through_affine(boxes: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Apply an image affine (pixel-centre indices) to pixel-edge boxes: shift by half a pixel, apply, shift back.

    MONAI affines map pixel centres (index i is the centre of pixel i); box edges sit half a pixel off the centres
    (TO_REMOVE = 0 convention), so edge e is centre coordinate e - 0.5.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).float()
    out = apply_affine_to_boxes(boxes.double() - 0.5, affine.double()) + 0.5
    return out.float()


class DetectionTargetsd(MapTransform):
    """Manifest boxes -> MONAI boxes of the loaded image; labels -> 0..K-1 (after LoadRadiographd).

    "box" [[x1, y1, x2, y2]] (x = column) becomes a float tensor [N, 4] in MONAI order [row1, col1, row2, col2];
    "box_label" (class-name indices) becomes "label", a long tensor [N]. Boxes past the image: see out_of_image.
    The original boxes are kept under "box_xyxy" for the savers.
    """

    def __init__(
        self,
        source_ids: Sequence[int],
        image_key: str = "image",
        box_key: str = "box",
        label_key: str = "label",
        out_of_image: str = "error",
    ) -> None:
        super().__init__([box_key])
        _check_policy("out_of_image", out_of_image)
        self.index = {int(s): n for n, s in enumerate(source_ids)}
        self.image_key, self.box_key, self.label_key, self.out_of_image = image_key, box_key, label_key, out_of_image

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        height, width = d[self.image_key].shape[-2:]
        xyxy = torch.as_tensor(np.asarray(d[self.box_key], dtype=np.float32).reshape(-1, 4))
        labels = torch.as_tensor([self.index[int(v)] for v in d.get("box_label", [])], dtype=torch.long)
        boxes = xyxy[:, [1, 0, 3, 2]]  # x = column -> MONAI: coordinate 0 along rows
        outside = (boxes[:, 2] > height) | (boxes[:, 3] > width) | (boxes < 0).any(dim=1)
        if bool(outside.any()):
            if self.out_of_image == "error":
                first = xyxy[outside][0].tolist()
                raise ManifestError(
                    f"item {d.get('id', '?')} ({d[self.image_key].meta.get('filename_or_obj')}): "
                    f"box {first} (x1, y1, x2, y2) reaches past the {width} x {height} image"
                )
            boxes, labels = ClipBoxToImage(remove_empty=True)(boxes, labels, (height, width))[:2]
            boxes, labels = torch.as_tensor(boxes).float(), torch.as_tensor(labels).long()
        d["box_xyxy"] = boxes[:, [1, 0, 3, 2]].clone()
        d[self.box_key], d[self.label_key] = boxes.float(), labels
        d[self.image_key].meta["original_spatial_shape"] = [int(height), int(width)]
        return d


class BoxesFollowImaged(MapTransform):
    """Map boxes from original pixels onto the transformed image through the image's affine (MONAI MetaTensor).

    Every MONAI spatial transform (here Resized and SpatialPadd) updates the image's affine, which maps its pixel
    indices to those of the image as loaded; the boxes get the inverse of that mapping, so they cover the same
    pixels before and after (tests/test_detection_data.py checks this on a drawn box).
    """

    def __init__(self, box_keys: KeysCollection, image_key: str = "image") -> None:
        super().__init__(box_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        inverse = torch.linalg.inv(_spatial_affine(d[self.image_key]))
        for key in self.key_iterator(d):
            d[key] = boxes_through_affine(torch.as_tensor(d[key]), inverse)
        return d


class BoxesToOriginald(MapTransform):
    """Map predicted MONAI boxes of the network input back to the original image, in the manifest convention.

    Writes `<key><output_suffix>` (default `<key>_xyxy`; "" replaces the key): [[x1, y1, x2, y2]] (x = column) in
    pixels of the image as loaded, clipped to it.
    """

    def __init__(self, box_keys: KeysCollection, image_key: str = "image", output_suffix: str = "_xyxy") -> None:
        super().__init__(box_keys)
        self.image_key, self.output_suffix = image_key, output_suffix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        affine = _spatial_affine(image)
        height, width = image.meta.get("original_spatial_shape", image.meta["spatial_shape"])[:2]
        for key in self.key_iterator(d):
            boxes = boxes_through_affine(torch.as_tensor(d[key]).detach().cpu(), affine)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, float(height))
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, float(width))
            d[f"{key}{self.output_suffix}"] = boxes[:, [1, 0, 3, 2]]
        return d


def detection_transforms(
    source_ids: Sequence[int],
    image_size: int = 224,
    train: bool = False,
    augment: bool = True,
    out_of_image: str = "error",
    flip_prob: float = 0.5,
    zoom_prob: float = 0.3,
    zoom_range: tuple[float, float] = (0.9, 1.1),
    intensity_range: tuple[float, float] = (-1.0, 1.0),
    load: bool = True,
) -> list:
    """Load, boxes to MONAI order, resize the long side to image_size keeping the aspect ratio ("area" filter),
    zero-pad to a square (boxes follow through the image affine), [0, 1] -> intensity_range.

    Training with augment: MONAI's RandFlipBoxd (left-right) and RandZoomBoxd (keep_size) move image and boxes
    together, then ClipBoxToImaged drops boxes zoomed out of view. No crop: a detector sees the whole radiograph.
    """
    transforms = [LoadRadiographd(keys="image")] if load else []
    transforms += [
        DetectionTargetsd(source_ids, out_of_image=out_of_image),
        Resized("image", spatial_size=int(image_size), size_mode="longest", mode="area"),
        SpatialPadd("image", spatial_size=(image_size, image_size), method="symmetric", mode="constant"),
        BoxesFollowImaged("box"),
        ScaleIntensityRanged(
            "image", a_min=0.0, a_max=1.0, b_min=float(intensity_range[0]), b_max=float(intensity_range[1]), clip=True
        ),
        EnsureTyped("image", dtype=torch.float32, track_meta=True),
    ]
    if train and augment:
        transforms += [
            RandFlipBoxd(
                image_keys="image", box_keys="box", box_ref_image_keys="image", prob=flip_prob, spatial_axis=1
            ),
            RandZoomBoxd(
                image_keys="image",
                box_keys="box",
                box_ref_image_keys="image",
                prob=zoom_prob,
                min_zoom=zoom_range[0],
                max_zoom=zoom_range[1],
                keep_size=True,
                padding_mode="constant",
            ),
            ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
        ]
    return transforms


def inference_transforms(image_size: int = 224, intensity_range: tuple[float, float] = (-1.0, 1.0)) -> list:
    """The evaluation image pipeline without boxes (what the inference config and MONAI Label run)."""
    return [
        LoadRadiographd(keys="image"),
        RecordOriginalShaped("image"),
        Resized("image", spatial_size=int(image_size), size_mode="longest", mode="area"),
        SpatialPadd("image", spatial_size=(image_size, image_size), method="symmetric", mode="constant"),
        ScaleIntensityRanged(
            "image", a_min=0.0, a_max=1.0, b_min=float(intensity_range[0]), b_max=float(intensity_range[1]), clip=True
        ),
        EnsureTyped("image", dtype=torch.float32, track_meta=True),
    ]


class RecordOriginalShaped(MapTransform):
    """Store the loaded image's [H, W] in its meta ("original_spatial_shape"), for clipping restored boxes."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key].meta["original_spatial_shape"] = [int(s) for s in d[key].shape[-2:]]
        return d
