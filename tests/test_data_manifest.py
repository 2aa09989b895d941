"""Manifests (bundle/data/manifest.py): deterministic writing, loading with absolute paths, and named errors."""

from __future__ import annotations

import json

import pytest

from bundle.data.manifest import ManifestError, load_manifest, read_manifest, write_manifest


def make_dataset(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        (root / "images" / f"{name}.png").write_bytes(b"png")
    (root / "masks" / "a.png").write_bytes(b"png")
    splits = {
        "training": [
            {"id": "a", "image": "images/a.png", "report": "No acute disease.", "label": [1.0, 0.0]},
            {"id": "b", "image": "images/b.png", "report": "Mild cardiomegaly.", "label": [0.0, 1.0]},
        ],
        "validation": [{"id": "c", "image": "images/c.png", "report": "Small effusion.", "label": [0.0, 0.0]}],
    }
    return splits


def test_round_trip_with_absolute_paths_and_meta(tmp_path):
    splits = make_dataset(tmp_path)
    path = tmp_path / "manifests" / "pretrain.json"
    write_manifest(path, splits, {"class_names": ["x", "y"], "source": "test"})
    content = read_manifest(path)
    assert set(content) == {"training", "validation", "test", "meta"} and content["test"] == []
    items = load_manifest(path, "training")  # dataset_dir defaults to the manifest's parent's parent
    assert [it["id"] for it in items] == ["a", "b"]
    assert items[0]["image"] == str(tmp_path / "images" / "a.png")
    assert items[0]["label"] == [1.0, 0.0] and items[0]["report"] == "No acute disease."
    other = load_manifest(path, "validation", dataset_dir=tmp_path)
    assert other[0]["image"] == str(tmp_path / "images" / "c.png")


def test_bytes_do_not_depend_on_key_order(tmp_path):
    splits = make_dataset(tmp_path)
    shuffled = {
        "validation": [dict(reversed(list(it.items()))) for it in splits["validation"]],
        "training": [dict(reversed(list(it.items()))) for it in splits["training"]],
    }
    write_manifest(tmp_path / "one.json", splits, {"b": 1, "a": [1, 2]})
    write_manifest(tmp_path / "two.json", shuffled, {"a": [1, 2], "b": 1})
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert (tmp_path / "one.json").read_bytes().endswith(b"}\n")
    assert not (tmp_path / "one.json.tmp").exists()


def test_segmentation_mask_paths_are_resolved_and_checked(tmp_path):
    make_dataset(tmp_path)
    path = tmp_path / "manifests" / "seg.json"
    write_manifest(
        path,
        {
            "training": [{"id": "a", "image": "images/a.png", "label": "masks/a.png"}],
            "validation": [{"id": "b", "image": "images/b.png", "label": "masks/b.png"}],
        },
        {},
    )
    assert load_manifest(path, "training")[0]["label"] == str(tmp_path / "masks" / "a.png")
    with pytest.raises(ManifestError, match=r"item b \(validation\): label file not found: .*masks/b.png"):
        load_manifest(path, "validation")


def test_missing_image_names_the_item_and_the_path(tmp_path):
    splits = make_dataset(tmp_path)
    path = tmp_path / "manifests" / "pretrain.json"
    write_manifest(path, splits, {})
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(ManifestError, match=r"item b \(training\): image file not found: .*images/b.png"):
        load_manifest(path, "training")
    assert len(load_manifest(path, "training", check_files=False)) == 2


def test_bad_manifests_are_refused_with_the_reason(tmp_path):
    splits = make_dataset(tmp_path)
    with pytest.raises(ManifestError, match="id a appears in training and again in validation"):
        write_manifest(
            tmp_path / "dup.json",
            {"training": splits["training"], "validation": [dict(splits["validation"][0], id="a")]},
            {},
        )
    with pytest.raises(ManifestError, match="unknown split"):
        write_manifest(tmp_path / "x.json", {"train": splits["training"]}, {})
    with pytest.raises(ManifestError, match=r"training\[0\].*no 'image'"):
        write_manifest(tmp_path / "x.json", {"training": [{"id": "z"}]}, {})
    with pytest.raises(ManifestError, match="not plain JSON"):
        write_manifest(tmp_path / "x.json", {"training": [{"id": "z", "image": "i", "v": float("nan")}]}, {})
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "none.json", "training")
    (tmp_path / "broken.json").write_text('{"training": [', encoding="utf-8")
    with pytest.raises(ManifestError, match="broken.json: not a readable JSON"):
        load_manifest(tmp_path / "broken.json", "training")
    (tmp_path / "nosplit.json").write_text(json.dumps({"training": []}), encoding="utf-8")
    with pytest.raises(ManifestError, match="no 'test' split"):
        load_manifest(tmp_path / "nosplit.json", "test")
    with pytest.raises(ManifestError, match="unknown split 'train'"):
        load_manifest(tmp_path / "nosplit.json", "train")
