"""The bundle's manifest (MONAI datalist JSON) shared by the demo and every real-dataset preparation script:

    {"training": [...], "validation": [...], "test": [...], "meta": {...}}

Items carry paths relative to dataset_dir (architecture.md): pretraining {"image", "report", "id"}, classification
{"image", "label" (multi-hot floats or int), "id"}, segmentation {"image", "label" (mask path), "id"}, detection
{"image", "box": [[x1, y1, x2, y2], ...], "box_label": [...], "id"}; boxes in pixels of the stored image, x = column.
Written with sorted keys and fixed formatting, so the same content gives byte-identical files on any machine.

Split leakage: loading any split checks ALL splits of the file: the same id, or the same image file, in two splits is
a ManifestError naming both splits (a test image seen in training inflates every downstream number). A user who
really wants overlap says so explicitly: `"meta": {"allow_split_overlap": true}` in the manifest, or
`load_manifest(..., allow_split_overlap=True)`; the overlap is then logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
MAX_SHOWN = 5
# item keys whose string values are file paths relative to dataset_dir
PATH_KEYS = ("image", "label", "mask")


class ManifestError(ValueError):
    """A manifest or one of its items is unusable; the message names the manifest, the item id and the reason."""


def check_splits(splits: Mapping[str, Sequence[dict]], where: str = "manifest") -> None:
    """Known split names, every item a dict with "id" and "image", every id in exactly one place."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ManifestError(f"{where}: unknown split name(s) {sorted(unknown)}; expected {list(SPLITS)}")
    seen: dict[str, str] = {}
    for split, items in splits.items():
        for n, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ManifestError(f"{where}: {split}[{n}] is a {type(item).__name__}, not an item dict")
            for key in ("id", "image"):
                if key not in item:
                    raise ManifestError(f"{where}: {split}[{n}] (id {item.get('id', '?')}) has no '{key}'")
            item_id = str(item["id"])
            if item_id in seen:
                raise ManifestError(f"{where}: id {item_id} appears in {seen[item_id]} and again in {split}")
            seen[item_id] = split


def manifest_text(splits: Mapping[str, Sequence[dict]], meta: Mapping) -> str:
    """The exact file content: all three splits (missing ones empty), "meta", sorted keys, one-space indent."""
    content = {name: [dict(item) for item in splits.get(name, [])] for name in SPLITS}
    content["meta"] = dict(meta)
    return json.dumps(content, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def write_manifest(path: str | os.PathLike, splits: Mapping[str, Sequence[dict]], meta: Mapping) -> None:
    """Check and write a manifest deterministically (atomically: a reader never sees half a file)."""
    path = Path(path)
    if not isinstance(meta, Mapping):
        raise ManifestError(f"{path}: meta must be a dict, got {type(meta).__name__}")
    check_splits(splits, str(path))
    try:
        text = manifest_text(splits, meta)
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{path}: content is not plain JSON ({e})") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> dict:
    """The whole manifest as a dict; ManifestError naming the file when it is missing or not a manifest."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(f"manifest not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not a readable JSON manifest ({e})") from e
    if not isinstance(content, dict):
        raise ManifestError(f"{path}: top level is a {type(content).__name__}, expected an object with splits")
    return content


def split_overlap(content: Mapping, root: str | os.PathLike) -> list[str]:
    """Descriptions of every id and every image file (resolved against root) that appears in more than one split."""
    where_id: dict[str, list[str]] = {}
    where_image: dict[str, list[str]] = {}
    for split in SPLITS:
        items = content.get(split)
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, Mapping):
                continue
            if "id" in item:
                where_id.setdefault(str(item["id"]), []).append(split)
            image = item.get("image")
            if isinstance(image, str):
                full = os.path.normpath(image if os.path.isabs(image) else os.path.join(root, image))
                where_image.setdefault(full, []).append(f"{split} (id {item.get('id', '?')})")
    problems = [f"id {i} in {' and '.join(dict.fromkeys(s))}" for i, s in where_id.items() if len(set(s)) > 1]
    problems += [
        f"image {p} in {' and '.join(s)}" for p, s in where_image.items() if len({x.split(" ")[0] for x in s}) > 1
    ]
    return problems


def load_manifest(
    path: str | os.PathLike,
    split: str,
    dataset_dir: str | os.PathLike | None = None,
    check_files: bool = True,
    allow_split_overlap: bool | None = None,
) -> list[dict]:
    """The items of one split with their path keys made absolute against dataset_dir (default: the manifest's
    parent's parent, i.e. DIR for DIR/manifests/x.json). With check_files, a missing image or mask file raises
    ManifestError naming the item id and the path. An id or image file in two splits raises ManifestError unless
    allow_split_overlap (default: the manifest's meta.allow_split_overlap, else False)."""
    path = Path(path)
    if split not in SPLITS:
        raise ManifestError(f"{path}: unknown split '{split}'; expected one of {list(SPLITS)}")
    content = read_manifest(path)
    if split not in content:
        raise ManifestError(f"{path}: no '{split}' split")
    items = content[split]
    if not isinstance(items, list):
        raise ManifestError(f"{path}: '{split}' is a {type(items).__name__}, expected a list of items")
    check_splits({split: items}, str(path))
    root = Path(dataset_dir) if dataset_dir is not None else path.resolve().parent.parent
    if allow_split_overlap is None:
        meta = content.get("meta")
        allow_split_overlap = bool(isinstance(meta, Mapping) and meta.get("allow_split_overlap") is True)
    overlap = split_overlap(content, root)
    if overlap:
        shown = "; ".join(overlap[:MAX_SHOWN]) + (" ..." if len(overlap) > MAX_SHOWN else "")
        if not allow_split_overlap:
            raise ManifestError(
                f"{path}: {len(overlap)} id(s) / image file(s) appear in more than one split "
                f"(training / validation / test must be disjoint): {shown}. If this is intended, set "
                '"allow_split_overlap": true in the manifest\'s meta'
            )
        logger.warning("%s: %d overlaps between splits allowed by allow_split_overlap: %s", path, len(overlap), shown)
    out = []
    for item in items:
        item = dict(item)
        for key in PATH_KEYS:
            value = item.get(key)
            if isinstance(value, str):
                full = value if os.path.isabs(value) else os.path.join(root, value)
                item[key] = os.path.normpath(full)
                if check_files and not os.path.isfile(item[key]):
                    raise ManifestError(f"{path}: item {item['id']} ({split}): {key} file not found: {item[key]}")
        out.append(item)
    return out
