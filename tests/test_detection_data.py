"""Detection data: boxes stay on the same pixels through resize / pad / flip / zoom, go back to the original image,
images without boxes, and the bad-input policy (clear errors or counted skips)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from test_detection_fixtures import write_tiny_detection_dataset

from bundle.data.manifest import ManifestError
from bundle.downstream.detection_data import (
    BoxesToOriginald,
    DetectionTargetsd,
    detection_classes,
    detection_transforms,
    load_detection_items,
)

torch.set_num_threads(1)


def _item(box, shape=(120, 60), label=(1,)):
    """A [1, H, W] image in [0, 1], ones exactly inside `box` ([x1, y1, x2, y2], x = column), like LoadRadiographd."""
    image = torch.zeros(1, *shape)
    for x1, y1, x2, y2 in box:
        image[0, y1:y2, x1:x2] = 1.0
    meta = {"filename_or_obj": "drawn.png", "spatial_shape": np.array(shape)}
    return {"image": MetaTensor(image, meta=meta), "box": [list(b) for b in box], "box_label": list(label), "id": "x"}


def _bright_extent(image: torch.Tensor) -> list[float]:
    """[row1, col1, row2, col2] (MONAI box order, edges) of the pixels above the background (-1 after scaling)."""
    rows, cols = torch.where(image[0] > -0.99)
    return [float(rows.min()), float(cols.min()), float(rows.max() + 1), float(cols.max() + 1)]


def test_resize_and_pad_keep_the_box_on_its_pixels():
    # 120 x 60 image -> long side 40 (scale 1/3) -> 40 x 20, padded by 10 columns each side to 40 x 40.
    # Box x 6..30, y 30..90 covers rows 10..30 and columns 2..10 + 10 = 12..20 of the result.
    out = Compose(detection_transforms([1], image_size=40, load=False))(_item([(6, 30, 30, 90)]))
    assert out["image"].shape == (1, 40, 40)
    expected = torch.tensor([[10.0, 12.0, 30.0, 20.0]])  # MONAI order [row1, col1, row2, col2]
    assert torch.allclose(out["box"], expected, atol=1e-4)
    assert _bright_extent(out["image"]) == expected[0].tolist()
    assert out["label"].tolist() == [0]  # class-name index 1 -> detection class 0
    restored = BoxesToOriginald("box")(out)["box_xyxy"]  # back to the original, x = column
    assert torch.allclose(restored, torch.tensor([[6.0, 30.0, 30.0, 90.0]]), atol=1e-4)


def test_flip_and_zoom_move_boxes_with_the_image():
    item = _item([(6, 30, 30, 90)])
    transforms = Compose(
        detection_transforms(
            [1], image_size=40, train=True, load=False, flip_prob=1.0, zoom_prob=1.0, zoom_range=(1.5, 1.5)
        )
    )
    transforms.set_random_state(0)
    out = transforms(item)
    # flip: columns 12..20 -> 20..28; zoom 1.5 about the centre (20, 20) keeping 40 x 40: rows 5..35, columns 20..32
    assert torch.allclose(out["box"], torch.tensor([[5.0, 20.0, 35.0, 32.0]]), atol=1e-4)
    extent = _bright_extent(out["image"])
    assert all(abs(a - b) <= 1.0 for a, b in zip(extent, out["box"][0].tolist()))  # interpolation blurs 1 px


def test_image_without_boxes():
    out = Compose(detection_transforms([1], image_size=40, train=True, load=False))(_item([], label=()))
    assert out["box"].shape == (0, 4) and out["label"].shape == (0,)
    assert out["box"].dtype == torch.float32 and out["label"].dtype == torch.long


def test_box_past_the_image_error_or_clip():
    with pytest.raises(ManifestError, match=r"item x .*drawn.png.*reaches past the 60 x 120 image"):
        DetectionTargetsd([1])(_item([(50, 10, 70, 20)]))
    clipped = DetectionTargetsd([1], out_of_image="clip")(_item([(50, 10, 70, 20), (10, 10, 20, 20)], label=(1, 1)))
    assert clipped["box"].tolist() == [[10.0, 50.0, 20.0, 60.0], [10.0, 10.0, 20.0, 20.0]]


def test_detection_classes_from_box_classes_or_class_names():
    assert detection_classes({"class_names": ["a", "b", "c", "d"], "box_classes": {"d": 3, "b": 1}}) == (
        ["b", "d"],
        [1, 3],
    )
    assert detection_classes({"class_names": ["pneumonia"]}) == (["pneumonia"], [0])


def _edit_manifest(path, split, index, **changes):
    content = json.loads(path.read_text())
    content[split][index].update(changes)
    path.write_text(json.dumps(content))
    return content[split][index]["id"]


def test_broken_records_raise_naming_the_item(tmp_path):
    manifest = write_tiny_detection_dataset(tmp_path)
    sid = _edit_manifest(manifest, "validation", 1, box=[[1, 1, 5, 5], [2, 2, 6, 6]], box_label=[1])
    with pytest.raises(ManifestError, match=rf"item {sid} \(validation\): 2 boxes but 1 box labels"):
        load_detection_items(str(manifest), "validation", bad_box="skip")  # never skipped: the manifest is broken
    _edit_manifest(manifest, "validation", 1, box=[[1, 1, 5, 5]], box_label=[7])
    with pytest.raises(ManifestError, match="box label #0 7 is not a detection class"):
        load_detection_items(str(manifest), "validation")


def test_zero_area_and_inverted_boxes_error_or_counted_skip(tmp_path, caplog):
    manifest = write_tiny_detection_dataset(tmp_path)
    zero = _edit_manifest(manifest, "validation", 1, box=[[5, 5, 5, 9]], box_label=[1])
    inverted = _edit_manifest(manifest, "validation", 2, box=[[9, 5, 3, 9]], box_label=[2])
    with pytest.raises(ManifestError, match=rf"item {zero} \(validation\): box #0 \[5, 5, 5, 9\] has zero area"):
        load_detection_items(str(manifest), "validation")
    with caplog.at_level(logging.WARNING):
        kept = load_detection_items(str(manifest), "validation", bad_box="skip")
    assert [it["id"] for it in kept] == ["d012", "d015"]
    assert "skipped 2 item(s) with bad_box" in caplog.text and inverted in caplog.text


def test_missing_image_error_or_counted_skip(tmp_path, caplog):
    manifest = write_tiny_detection_dataset(tmp_path)
    (tmp_path / "images" / "d013.png").unlink()
    with pytest.raises(ManifestError, match=r"item d013 \(validation\): image file not found: .*d013.png"):
        load_detection_items(str(manifest), "validation")
    with caplog.at_level(logging.WARNING):
        kept = load_detection_items(str(manifest), "validation", missing_image="skip")
    assert "d013" not in [it["id"] for it in kept] and len(kept) == 3
    assert "skipped 1 item(s) with missing_image" in caplog.text


def test_label_fraction_keeps_images_without_boxes(tmp_path):
    manifest = write_tiny_detection_dataset(tmp_path)
    items = load_detection_items(str(manifest), "training", fraction=0.1)
    assert [it["id"] for it in items] == ["d001", "d002"]
    everything = load_detection_items(str(manifest), "training", fraction=1.0)
    assert len(everything) == 12 and sum(1 for it in everything if not it["box"]) == 4
