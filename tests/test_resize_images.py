"""scripts/resize_images.py (bundle.data.prepare.resize_images): pre-resized copies of a manifest's images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_prepare_fixtures import write_dicom

from bundle.data.image_io import LoadRadiographd, radiograph_transforms
from bundle.data.manifest import load_manifest, read_manifest, write_manifest
from bundle.data.prepare.common import PreparationError
from bundle.data.prepare.resize_images import ResizeSettings, main, output_shape, resize_manifest

SIZE = 64
META = {"source": "test fixture", "image_format": "original files", "task": "pretraining", "split_seed": 0}


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth structure (gradients, a disc) plus mild noise, as 8-bit: resizing filters agree on such images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 60 + 100 * x / width + 50 * np.sin(y / height * 3 * np.pi)
    img += 60 * (((y - height / 2) ** 2 + (x - width / 3) ** 2) < (min(height, width) / 4) ** 2)
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """SRC/files/... images of several shapes and formats and SRC/manifests/pretrain.json in three splits."""
    src = tmp_path / "src"
    images = {
        "land": save(src / "files" / "p1" / "land.jpg", smooth_image(200, 300, 1)),  # landscape 300 x 200
        "port": save(src / "files" / "p2" / "port.png", smooth_image(300, 200, 2)),  # portrait 200 x 300
        "small": save(src / "files" / "p2" / "small.png", smooth_image(30, 40, 3)),  # long side < SIZE
        "dcm": write_dicom(src / "files" / "p3" / "scan.dcm", smooth_image(120, 90, 4)),
    }
    ramp = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 34).astype(np.uint16)  # 0 .. 65246
    images["deep"] = save(src / "files" / "p3" / "deep.png", ramp)  # 16-bit, no resize (long side 48)
    assert Image.open(images["deep"]).mode.startswith("I;16")
    items = {
        name: {
            "image": f"files/{p.parent.name}/{p.name}",
            "id": name,
            "report": f"report of {name}",
            "label": [0.0, 1.0],
            "extra": {"view": "PA", "n": i},
        }
        for i, (name, p) in enumerate(images.items())
    }
    splits = {
        "training": [items["port"], items["land"], items["deep"]],
        "validation": [items["small"]],
        "test": [items["dcm"]],
    }
    write_manifest(src / "manifests" / "pretrain.json", splits, META)
    return src, images


def run(src: Path, out: Path, **kwargs) -> dict:
    return resize_manifest(src / "manifests" / "pretrain.json", out, ResizeSettings(size=SIZE), **kwargs)


def eval_crop(path: Path) -> np.ndarray:
    """LoadRadiographd + the eval (centre-crop) transforms at image_size SIZE, crop 48."""
    data = LoadRadiographd()({"image": str(path), "id": path.stem})
    for transform in radiograph_transforms(image_size=SIZE, crop_size=48, train=False):
        data = transform(data)
    return data["image"].numpy()


def copy_of(out: Path, split: str, item_id: str) -> Path:
    item = next(i for i in load_manifest(out / "manifests" / "pretrain.json", split) if i["id"] == item_id)
    return Path(item["image"])


def test_new_manifest_keeps_records_and_points_at_the_copies(dataset, tmp_path):
    src, _ = dataset
    out = tmp_path / "out"
    summary = run(src, out, workers=2)  # the process-pool path
    assert summary["written"] == 5 and summary["already_complete"] == 0
    old, new = read_manifest(src / "manifests" / "pretrain.json"), read_manifest(out / "manifests" / "pretrain.json")
    for split in ("training", "validation", "test"):
        assert [i["id"] for i in new[split]] == [i["id"] for i in old[split]]
        for before, after in zip(old[split], new[split]):
            assert {k: v for k, v in after.items() if k != "image"} == {k: v for k, v in before.items() if k != "image"}
            assert after["image"].startswith("images/p") and after["image"] != before["image"]
            assert (out / after["image"]).is_file()
        loaded = load_manifest(out / "manifests" / "pretrain.json", split)  # dataset_dir = OUT, files checked
        assert all(Path(i["image"]).is_relative_to(out / "images") for i in loaded)
    assert {k: v for k, v in new["meta"].items() if k not in ("image_format", "resized_images")} == {
        k: v for k, v in old["meta"].items() if k != "image_format"
    }
    assert new["meta"]["resized_images"]["size"] == SIZE
    assert new["meta"]["resized_images"]["source_image_format"] == "original files"
    summary_file = json.loads((out / "manifests" / "summary_resize_pretrain.json").read_text())
    assert summary_file["records"] == {"training": 3, "validation": 1, "test": 1}
    assert new["training"][1]["image"] == "images/p1/land.png"  # relative to the sources' common folder (files/)
    # the DICOM is written as PNG, JPG/PNG keep the chosen format (png by default)
    assert copy_of(out, "test", "dcm").suffix == ".png"
    assert copy_of(out, "training", "land").name == "land.png"


def test_output_sizes_follow_the_long_side_rule(dataset, tmp_path):
    src, _ = dataset
    out = tmp_path / "out"
    run(src, out, workers=1)
    sizes = {}
    for split, item_id in (("training", "land"), ("training", "port"), ("validation", "small"), ("test", "dcm")):
        with Image.open(copy_of(out, split, item_id)) as im:
            sizes[item_id] = im.size  # (width, height)
    assert sizes["land"] == (64, 43)  # 300 x 200: long side 64, short round(200 * 64 / 300) = 43
    assert sizes["port"] == (43, 64)
    assert sizes["small"] == (40, 30)  # never upscaled
    assert sizes["dcm"] == (48, 64)  # 90 x 120 -> round(90 * 64 / 120) = 48
    assert output_shape(3056, 2544, 256) == (256, 213)  # a typical MIMIC-CXR portrait (rows, columns)
    assert output_shape(2544, 3056, 256) == (213, 256)
    assert output_shape(255, 100, 256) == (255, 100)


def test_pixels_match_an_independent_resize_and_the_training_transforms(dataset, tmp_path):
    src, images = dataset
    out = tmp_path / "out"
    run(src, out, workers=1)
    for split, item_id in (("training", "land"), ("training", "port")):
        copy = np.asarray(Image.open(copy_of(out, split, item_id)), dtype=np.float64)
        with Image.open(images[item_id]) as original:
            reference = np.asarray(original.resize(copy.shape[::-1], Image.Resampling.BOX), dtype=np.float64)
        assert copy.shape == reference.shape
        assert np.abs(copy - reference).mean() < 2.0  # grey levels
        # the eval transforms (centre crop) on the copy equal those on the original up to the 8-bit rounding
        a, b = eval_crop(images[item_id]), eval_crop(copy_of(out, split, item_id))
        assert a.shape == b.shape == (1, 48, 48)
        assert np.abs(a - b).max() <= 1.0 / 255 + 1e-6  # 0.5/255 in [0, 1] is 1/255 in [-1, 1]


def test_16bit_png_uses_the_readers_intensity_rule(dataset, tmp_path):
    src, images = dataset
    raw = np.asarray(Image.open(images["deep"]), dtype=np.float64)
    out8 = tmp_path / "out8"
    run(src, out8, workers=1)
    copy8 = np.asarray(Image.open(copy_of(out8, "training", "deep")))
    assert copy8.dtype == np.uint8
    np.testing.assert_array_equal(copy8, np.round(raw / 65535 * 255).astype(np.uint8))  # 16-bit / 65535
    out16 = tmp_path / "out16"
    resize_manifest(src / "manifests" / "pretrain.json", out16, ResizeSettings(size=SIZE, bits=16), workers=1)
    with Image.open(copy_of(out16, "training", "deep")) as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im, dtype=np.float64), raw)  # no resize: values kept exactly


def test_resume_skips_complete_outputs_and_redoes_missing_or_damaged_ones(dataset, tmp_path):
    src, _ = dataset
    out = tmp_path / "out"
    run(src, out, workers=1)
    outputs = sorted((out / "images").rglob("*.png"))
    assert len(outputs) == 5
    before = {p: p.stat().st_mtime_ns for p in outputs}
    missing, damaged = outputs[0], outputs[1]
    missing.unlink()
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    summary = run(src, out, workers=1)
    assert summary["written"] == 2 and summary["already_complete"] == 3
    assert missing.is_file()
    with Image.open(damaged) as im:
        im.load()
    for p in outputs[2:]:
        assert p.stat().st_mtime_ns == before[p]
    assert not list((out / "images").rglob("*.partial"))
    # other settings into the same OUT: refused, not silently mixed
    with pytest.raises(PreparationError, match="other settings"):
        resize_manifest(src / "manifests" / "pretrain.json", out, ResizeSettings(size=32), workers=1)


def test_unreadable_image_names_file_and_record_or_is_counted_with_skip(dataset, tmp_path, caplog):
    src, _ = dataset
    bad = src / "files" / "p4" / "bad.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a JPEG at all" * 10)
    content = read_manifest(src / "manifests" / "pretrain.json")
    content["training"].append({"image": "files/p4/bad.jpg", "id": "bad-record", "report": "x"})
    content["validation"].append({"image": "files/p4/gone.jpg", "id": "gone-record", "report": "y"})
    meta = content.pop("meta")
    write_manifest(src / "manifests" / "pretrain.json", content, meta)

    out = tmp_path / "out"
    with pytest.raises(PreparationError) as error:
        run(src, out, workers=1)
    message = str(error.value)
    assert ("bad-record" in message and str(bad) in message) or ("gone-record" in message and "gone.jpg" in message)
    assert not (out / "manifests" / "pretrain.json").exists()
    # the command line: exit code 2 and the message in the log
    code = main(["--manifest", str(src / "manifests" / "pretrain.json"), "--out", str(out), "--size", str(SIZE)])
    assert code == 2 and "record" in caplog.text

    summary = run(src, out, workers=1, skip_unreadable=True)
    assert summary["skipped"]["image cannot be read"]["count"] == 1
    assert summary["skipped"]["image file missing"]["count"] == 1
    assert "bad-record" in summary["skipped"]["image cannot be read"]["records"][0]
    new = read_manifest(out / "manifests" / "pretrain.json")
    ids = {i["id"] for split in ("training", "validation", "test") for i in new[split]}
    assert ids == {"land", "port", "small", "dcm", "deep"}


def test_manifests_with_image_space_annotations_are_refused(tmp_path):
    src = tmp_path / "src"
    save(src / "a.png", smooth_image(100, 80))
    write_manifest(
        src / "manifests" / "detection.json",
        {"training": [{"image": "a.png", "id": "a", "box": [[1, 2, 3, 4]], "box_label": [0]}]},
        {"task": "detection"},
    )
    with pytest.raises(PreparationError, match="box"):
        resize_manifest(src / "manifests" / "detection.json", tmp_path / "out", ResizeSettings(size=SIZE))
    with pytest.raises(PreparationError, match="overwrite the source"):
        resize_manifest(src / "manifests" / "detection.json", src, ResizeSettings(size=SIZE))
