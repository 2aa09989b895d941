"""Segmentation data: image-mask alignment through loading, resizing, padding, cropping, augmentation and inversion;
mask classes and channels; SIIM-style balancing; clear errors for bad items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Invertd
from PIL import Image
from test_segmentation_fixtures import write_tiny_segmentation_dataset

from bundle.data.image_io import LoadRadiographd
from bundle.data.manifest import ManifestError
from bundle.downstream.segmentation_data import (
    LoadSegmentationMaskd,
    SegmentationDataError,
    balance_positives,
    inference_datalist,
    mask_class_ids,
    segmentation_channels,
    segmentation_training_items,
    segmentation_transforms,
)

ROWS, COLS = 40, 48
SQUARE = (slice(8, 24), slice(16, 32))  # rows 8..23, columns 16..31 of the stored image


def square_item(tmp_path, mask_value: int = 1, mask_shape=(ROWS, COLS)) -> dict:
    image = np.zeros((ROWS, COLS), np.uint8)
    image[SQUARE] = 255
    mask = np.zeros(mask_shape, np.uint8)
    mask[SQUARE] = mask_value
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {"id": "case_7", "image": str(tmp_path / "image.png"), "label": str(tmp_path / "mask.png")}


def loader(values=(1,)):
    return [LoadRadiographd(keys="image"), LoadSegmentationMaskd({"foreground": list(values)}, values)]


def load(item: dict) -> dict:
    """The two loaders called directly: MONAI's Compose would wrap their errors in a RuntimeError chain."""
    for transform in loader():
        item = transform(item)
    return item


def pipeline(train: bool, image_size: int, crop_size: int | None = None, **kw) -> Compose:
    return Compose(
        loader() + segmentation_transforms(("image", "label"), image_size, crop_size or image_size, train=train, **kw)
    )


@pytest.mark.parametrize(
    "image_size,rows,cols",
    [
        # x2 up: 48 -> 96 columns, 40 -> 80 rows padded by 8 above: square rows 8+16..8+47, columns 32..63
        (96, slice(24, 56), slice(32, 64)),
        # x0.5 down: 48 -> 24 columns, 40 -> 20 rows padded by 2 above: rows 2+4..2+11, columns 8..15
        (24, slice(6, 14), slice(8, 16)),
    ],
)
def test_square_stays_on_the_same_pixels_and_inverts(tmp_path, image_size, rows, cols):
    item = square_item(tmp_path)
    transform = pipeline(False, image_size, divisible=8)
    out = transform(item)
    image, mask = out["image"], out["label"]
    side = max(image_size, int(np.ceil(image_size / 8) * 8))
    assert image.shape == mask.shape == (1, side, side)
    expected = torch.zeros(side, side)
    expected[rows, cols] = 1
    assert torch.equal(mask[0], expected)
    assert torch.equal((image[0] > 0).float(), expected)  # [-1, 1] image: the square is +1, the rest -1
    # Invertd (the inference path): the mask goes back to the stored image's 40 x 48 pixels exactly
    restored = Invertd(keys="label", transform=transform, orig_keys="image", nearest_interp=True)(
        {"image": out["image"], "label": out["label"]}
    )["label"]
    original = torch.zeros(ROWS, COLS)
    original[SQUARE] = 1
    assert restored.shape == (1, ROWS, COLS)
    assert torch.equal(torch.as_tensor(restored[0]).float(), original)


def test_training_crop_and_augmentation_keep_image_and_mask_together(tmp_path):
    item = square_item(tmp_path)
    crop = pipeline(True, 96, 64, augment=False)
    for seed in range(3):
        crop.set_random_state(seed)
        out = crop(item)
        assert out["image"].shape == out["label"].shape == (1, 64, 64)
        assert torch.equal((out["image"][0] > 0).float(), out["label"][0])
    affine = pipeline(True, 96, 64, augment=True, aug_prob=1.0, shift_limit=0.1)
    for seed in range(3):
        affine.set_random_state(seed)
        out = affine(item)
        mask, bright = out["label"][0] > 0.5, out["image"][0] > 0
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}  # nearest: still a mask
        if mask.any():
            iou = (mask & bright).sum() / (mask | bright).sum()
            assert iou > 0.85  # bilinear image edges vs nearest mask edges differ by at most a pixel


def test_mask_of_another_size_names_the_item(tmp_path):
    item = square_item(tmp_path, mask_shape=(ROWS, COLS + 2))
    with pytest.raises(SegmentationDataError, match=r"item case_7: mask .*mask.png is 40x50.*image is 40x48"):
        load(item)


def test_non_binary_mask_values_are_refused(tmp_path):
    item = square_item(tmp_path, mask_value=255)
    with pytest.raises(SegmentationDataError, match=r"item case_7: .*values \[255\].*\[0, 1\]"):
        load(item)


def test_missing_mask_names_the_item(tmp_path):
    item = square_item(tmp_path)
    (tmp_path / "mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="item case_7: label map file not found"):
        load(item)
    manifest = write_tiny_segmentation_dataset(tmp_path / "data")
    first = json.loads(manifest.read_text())["training"][0]
    (tmp_path / "data" / first["label"]).unlink()
    with pytest.raises(ManifestError, match=f"item {first['id']} .*label file not found"):
        segmentation_training_items(str(manifest), 1.0)


def test_empty_training_split_after_the_fraction(tmp_path):
    manifest = write_tiny_segmentation_dataset(tmp_path / "data")
    content = json.loads(manifest.read_text())
    content["meta"]["fractions"]["0.01"] = []
    manifest.write_text(json.dumps(content))
    with pytest.raises(SegmentationDataError, match="no training items for label fraction 0.01"):
        segmentation_training_items(str(manifest), 0.01)


def test_channels_from_the_manifest_meta():
    demo = {"mask_classes": {"pleural_effusion": 2, "lung_opacity": 3, "pneumothorax": 7}}
    assert mask_class_ids(demo) == {"pleural_effusion": 2, "lung_opacity": 3, "pneumothorax": 7}
    assert segmentation_channels(demo) == {"foreground": [2, 3, 7]}
    assert segmentation_channels(demo, "per_class") == {
        "pleural_effusion": [2],
        "lung_opacity": [3],
        "pneumothorax": [7],
    }
    assert segmentation_channels(demo, "binary", ["pneumothorax"]) == {"pneumothorax": [7]}
    siim = {"mask_values": {"0": "background", "1": "pneumothorax"}}
    assert segmentation_channels(siim) == {"pneumothorax": [1]}
    with pytest.raises(ValueError, match="not mask classes"):
        segmentation_channels(demo, "binary", ["cardiomegaly"])


def test_per_class_channels_of_a_label_map(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 2, 3, 7
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = LoadSegmentationMaskd({"a": [2], "b": [3, 7]}, [2, 3, 7])({"id": "x", "label": str(tmp_path / "m.png")})
    assert out["label"].shape == (2, 4, 4)
    assert out["label"][0].nonzero().tolist() == [[0, 0]]
    assert out["label"][1].nonzero().tolist() == [[1, 1], [2, 2]]


def test_balance_keeps_all_positives_and_as_many_negatives(tmp_path):
    items = []
    for i in range(8):
        mask = np.zeros((4, 4), np.uint8)
        mask[0, 0] = 1 if i < 3 else 0
        Image.fromarray(mask).save(tmp_path / f"{i}.png")
        items.append({"id": f"n{i}", "label": str(tmp_path / f"{i}.png")})
    balanced = balance_positives(items, seed=0)
    ids = [it["id"] for it in balanced]
    assert ids[:3] == ["n0", "n1", "n2"] and len(ids) == 6
    assert ids == [it["id"] for it in balance_positives(items, seed=0)]  # deterministic
    assert ids == [it["id"] for it in items if it["id"] in set(ids)]  # manifest order kept


def test_inference_inputs(tmp_path):
    item = square_item(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    assert inference_datalist(item["image"]) == [{"image": item["image"]}]
    assert inference_datalist(str(tmp_path)) == [
        {"image": str(tmp_path / "image.png")},
        {"image": str(tmp_path / "mask.png")},
    ]
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        inference_datalist(str(tmp_path / "missing.dcm"))
    with pytest.raises(FileNotFoundError, match="inference input not found: None"):
        inference_datalist(None)
