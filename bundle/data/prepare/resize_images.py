"""Pre-resize the images of a prepared manifest, so that data loading at MIMIC-CXR scale can feed a GPU:

    python scripts/resize_images.py --manifest DIR/manifests/pretrain.json --out DIR_256 [--size 256] [--workers N]

Decoding a full-size MIMIC-CXR-JPG image (about 2500 x 3000 pixels) costs far more than everything else the training
transforms do (docs/results/data_pipeline_benchmark.md). This tool writes a small copy of every image of a manifest
once, and a new manifest OUT/manifests/<name>.json that points at the copies; train with `--dataset_dir OUT`.

Resize rule (the one of `bundle.data.image_io.radiograph_transforms`, so that training on the copy gives the same
crops): the image is read with the bundle's reader (`load_radiograph`: PNG/JPG 8-bit / 255, 16-bit / 65535, DICOM
through its modality and VOI LUTs, MONOCHROME1 inverted; float [0, 1]) and resized with the very transform training
uses, MONAI `Resize(spatial_size=size, size_mode="longest", mode="area")`: the LONG side becomes `size`, the short
side `int(round(short * size / long))`, aspect ratio kept, no padding (padding to a square stays in training). An
image whose long side is already <= size is not resized (never upscaled): training then does exactly what it would
have done with the original. With `--size` equal to the training `image_size` (256, configs/pretrain.yaml), the
training `Resized` finds the copy already at its target shape and leaves it unchanged (MONAI returns the input for an
identical size), so the padded image and every crop equal those of the original up to the 8-bit rounding of the copy
(at most 0.5/255 in [0, 1]) and, with `--format jpg`, the JPEG loss. A larger `--size` (e.g. 512 for other crop
sizes) is allowed; training then area-resizes the copy a second time (close to, not bit-equal to, a single resize).
A smaller `--size` than the training image_size would make training upsample: do not.

Output: OUT/images/<the source path relative to the deepest folder holding all source images, new suffix>; for
MIMIC-CXR (all images under files/) OUT/images/p10/p10000032/s5.../<dicom_id>.png. `--format png` (default,
lossless; `--bits 16` keeps 16-bit PNGs of 16-bit sources) or `--format jpg` (`--quality`, default 95). DICOM and
NIfTI sources are always written as PNG (their windowing already happened in the reader; a lossy JPEG on top would
be a second loss). Values are `round(x * 255)` (or `* 65535` for 16 bits), so reading the copy back with the same
reader gives x to within half a grey level.

Manifest: the same splits, records, ids and every field except "image" (relative to OUT, as every manifest's paths
are relative to its dataset_dir), in the same order. The meta is copied; "image_format" is replaced and
"resized_images" (settings, source manifest, counts) is added. Manifests whose items hold other image-space data
(segmentation masks, detection boxes in pixels of the stored image) are refused: resizing only the image would make
them wrong.

Resumable: every file is written to a temporary name in its folder and renamed (os.replace), so a file under its
final name is always complete. A rerun skips every output that exists, decodes fully, has the right mode and a long
side <= size; it redoes missing or damaged ones. The settings are kept in OUT/images/resize_settings.json; a rerun
with other settings stops (use another OUT or `--overwrite`, which rewrites every image).

Bad input: a missing or unreadable source image (the reader's RadiographReadError / FileNotFoundError) stops the run
with exit code 2 and a message naming the file and the record id(s) that use it; no manifest is written (the
images already written stay and are reused by the next run). With `--skip_unreadable` such a record is left out of
the new manifest instead, counted per reason, the first five logged with their ids; all are listed in the summary
OUT/manifests/summary_resize_<name>.json. Other errors (disk full, permission denied on OUT) always stop the run.

Parallel: `--workers N` processes (0: every CPU), one torch thread each; a tqdm bar on stderr shows rate and ETA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bundle.data.prepare.common import MAX_EXAMPLES, PreparationError, record_arguments, relative_path, run_main

LOG = logging.getLogger("bundle.data.prepare.resize_images")
RESIZE_VERSION = "1.0.0"
IMAGES_DIR = "images"
SETTINGS_FILE = "resize_settings.json"
FORMATS = ("png", "jpg")
SPLITS = ("training", "validation", "test")
# sources whose copies are always PNG (see the module doc)
PNG_ONLY_SUFFIXES = (".dcm", ".dicom", ".dic", ".nii", ".nii.gz")
STATUS_WRITTEN, STATUS_EXISTING, STATUS_MISSING, STATUS_UNREADABLE = "written", "existing", "missing", "unreadable"
REASONS = {STATUS_MISSING: "image file missing", STATUS_UNREADABLE: "image cannot be read"}


@dataclass(frozen=True)
class ResizeSettings:
    size: int = 256
    format: str = "png"
    quality: int = 95
    bits: int = 8

    def check(self) -> None:
        if self.size < 2:
            raise PreparationError(f"--size must be at least 2 pixels, got {self.size}")
        if self.format not in FORMATS:
            raise PreparationError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.bits not in (8, 16):
            raise PreparationError(f"--bits must be 8 or 16, got {self.bits}")
        if self.bits == 16 and self.format != "png":
            raise PreparationError("--bits 16 needs --format png (JPEG stores 8 bits)")
        if not 1 <= self.quality <= 100:
            raise PreparationError(f"--quality must be in 1..100, got {self.quality}")


# ----------------------------------------------------------------------------------------------- one image
def output_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(rows, columns) of the copy: the long side -> size with MONAI Resize(size_mode="longest")'s rounding;
    unchanged when the long side is already <= size."""
    longest = max(height, width)
    if longest <= size:
        return height, width
    scale = size / longest
    return int(round(height * scale)), int(round(width * scale))


def resize_radiograph(arr: np.ndarray, size: int) -> np.ndarray:
    """float32 [H, W] in [0, 1] -> float32 [h, w], the long side <= size, resized exactly as training resizes."""
    import torch
    from monai.transforms import Resize
    from monai.utils import convert_to_numpy

    if max(arr.shape) <= size:
        return arr
    resize = Resize(spatial_size=int(size), size_mode="longest", mode="area", anti_aliasing=False)
    resized = resize(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None])
    out = np.asarray(convert_to_numpy(resized)[0], dtype=np.float32)
    if out.shape != output_shape(*arr.shape, size):  # the rule stated in the docstring is the one MONAI applied
        raise AssertionError(f"resize of {arr.shape} gave {out.shape}, expected {output_shape(*arr.shape, size)}")
    return out


def quantize(arr: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] floats -> uint8 (round(x * 255)) or uint16 (round(x * 65535))."""
    top, dtype = (255.0, np.uint8) if bits == 8 else (65535.0, np.uint16)
    return np.round(np.clip(arr, 0.0, 1.0) * top).astype(dtype)


def output_format(source: str, settings: ResizeSettings) -> str:
    return "png" if source.lower().endswith(PNG_ONLY_SUFFIXES) else settings.format


def output_suffix(source: str, settings: ResizeSettings) -> str:
    return "." + output_format(source, settings)


def write_image_atomic(pixels: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    """Write to a temporary file in the same folder, then rename: the final name never holds half a file."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    image = Image.fromarray(pixels)  # uint8 -> mode L, uint16 -> mode I;16
    if fmt == "jpg":
        image.save(tmp, format="JPEG", quality=int(quality))
    else:
        image.save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)


def is_complete(path: Path, settings: ResizeSettings) -> bool:
    """An output written by this tool with these settings: it decodes fully, its mode matches the bit depth and its
    long side is <= size. Anything else (missing, truncated, other settings) is redone."""
    from PIL import Image

    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.load()
            modes = ("L",) if settings.bits == 8 else ("I;16", "I;16L", "I;16B", "I;16N")
            return im.mode in modes and max(im.size) <= settings.size
    except Exception:  # any decoding problem means: write it again
        return False


def resize_one(task: tuple[int, str, str, dict, bool]) -> tuple[int, str, str]:
    """(index, status, message) for one (source, output) pair; runs in the worker processes."""
    from bundle.data.image_io import RadiographReadError, load_radiograph

    index, source, output, settings_dict, overwrite = task
    settings = ResizeSettings(**settings_dict)
    out = Path(output)
    if not overwrite and is_complete(out, settings):
        return index, STATUS_EXISTING, ""
    try:
        arr = load_radiograph(source)
    except FileNotFoundError as e:
        return index, STATUS_MISSING, str(e)
    except RadiographReadError as e:
        return index, STATUS_UNREADABLE, str(e)
    pixels = quantize(resize_radiograph(arr, settings.size), settings.bits)
    write_image_atomic(pixels, out, output_format(source, settings), settings.quality)
    return index, STATUS_WRITTEN, ""


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_tasks(tasks: Sequence[tuple], workers: int, stop_at_failure: bool) -> Iterator[tuple[int, str, str]]:
    """Results in completion order with a progress bar (rate, ETA); `workers` <= 1 runs in this process. With
    stop_at_failure, the first missing / unreadable image ends the iteration (the pool is terminated)."""
    bar = tqdm(total=len(tasks), desc="resize", unit=" img", mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) < 2:
            _init_worker()
            results: Iterator = map(resize_one, tasks)
            pool = None
        else:
            pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker)
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            results = pool.imap_unordered(resize_one, tasks, chunksize=chunk)
        try:
            for result in results:
                bar.update(1)
                yield result
                if stop_at_failure and result[1] in REASONS:
                    return
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------- the manifest
def _source_items(manifest: Path, dataset_dir: Path | None) -> tuple[dict, dict[str, list[tuple[dict, str]]]]:
    """The raw manifest content and, per split present, (raw item, absolute source image path)."""
    from bundle.data.manifest import ManifestError, load_manifest, read_manifest

    try:
        content = read_manifest(manifest)
        per_split = {}
        for split in SPLITS:
            if split not in content:
                continue
            resolved = load_manifest(manifest, split, dataset_dir=dataset_dir, check_files=False)
            per_split[split] = list(zip(content[split], (item["image"] for item in resolved)))
    except ManifestError as e:
        raise PreparationError(str(e)) from e
    for split, pairs in per_split.items():
        for raw, _ in pairs:
            image_space = [k for k in ("box", "mask") if k in raw] + (
                ["label"] if isinstance(raw.get("label"), str) else []
            )
            if image_space:
                raise PreparationError(
                    f"{manifest}: item {raw['id']} ({split}) has {image_space} in pixels of the stored image "
                    "(segmentation mask / detection boxes); resizing only the image would make them wrong. Only "
                    "manifests without image-space annotations (pretraining, classification) can be resized"
                )
            if not isinstance(raw["image"], str):
                raise PreparationError(f"{manifest}: item {raw['id']} ({split}): image is not a path")
    return content, per_split


def output_paths(sources: Sequence[str], out_dir: Path, settings: ResizeSettings) -> dict[str, Path]:
    """{source: OUT/images/<path relative to the sources' common folder, new suffix>}; two sources that would get
    the same output (a.png and a.jpg) raise PreparationError."""
    unique = sorted(set(sources))
    if not unique:
        return {}
    root = os.path.commonpath([os.path.dirname(s) for s in unique])
    mapping: dict[str, Path] = {}
    taken: dict[Path, str] = {}
    for source in unique:
        rel = os.path.relpath(source, root)
        rel = rel[: -len(".nii.gz")] if rel.lower().endswith(".nii.gz") else os.path.splitext(rel)[0]
        out = out_dir / IMAGES_DIR / (rel + output_suffix(source, settings))
        if out in taken:
            raise PreparationError(f"{taken[out]} and {source} would both be written to {out}; rename one of them")
        taken[out] = source
        mapping[source] = out
    return mapping


def check_settings_file(out_dir: Path, settings: ResizeSettings, overwrite: bool) -> None:
    """OUT/images/resize_settings.json: written on the first run; a rerun with other settings is an error."""
    path = out_dir / IMAGES_DIR / SETTINGS_FILE
    wanted = dict(asdict(settings), version=RESIZE_VERSION)
    if path.is_file() and not overwrite:
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PreparationError(f"{path}: unreadable settings of a previous run ({e}); use --overwrite") from e
        if {k: found.get(k) for k in asdict(settings)} != asdict(settings):
            raise PreparationError(
                f"{out_dir / IMAGES_DIR} holds images made with other settings {found} (this run: {wanted}); "
                "choose another --out or pass --overwrite to rewrite every image"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resize_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    settings: ResizeSettings = ResizeSettings(),
    dataset_dir: str | os.PathLike | None = None,
    workers: int = 1,
    skip_unreadable: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    arguments: Mapping | None = None,
) -> dict:
    """Resize every image of `manifest` into OUT/images/ and write OUT/manifests/<name>.json (default name: the
    source manifest's) and OUT/manifests/summary_resize_<name>.json; returns the summary (see the module doc)."""
    from bundle.data.manifest import write_manifest

    settings.check()
    manifest, out = Path(manifest), Path(out)
    name = name or manifest.stem
    new_manifest = out / "manifests" / f"{name}.json"
    if new_manifest.resolve() == manifest.resolve():
        raise PreparationError(f"the new manifest would overwrite the source {manifest}; choose another --out/--name")
    content, per_split = _source_items(manifest, Path(dataset_dir) if dataset_dir is not None else None)
    users: dict[str, list[str]] = {}  # source image -> record ids
    for pairs in per_split.values():
        for raw, source in pairs:
            users.setdefault(source, []).append(str(raw["id"]))
    targets = output_paths(list(users), out, settings)
    check_settings_file(out, settings, overwrite)
    sources = sorted(users)
    tasks = [(i, s, str(targets[s]), asdict(settings), overwrite) for i, s in enumerate(sources)]
    workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
    LOG.info("%d image(s) of %s -> %s (%s, %d worker(s))", len(tasks), manifest, out / IMAGES_DIR, settings, workers)

    start = time.perf_counter()
    counts: Counter[str] = Counter()
    failed: dict[str, tuple[str, str]] = {}  # source -> (status, message)
    with contextlib.closing(run_tasks(tasks, workers, stop_at_failure=not skip_unreadable)) as results:
        for index, status, message in results:
            counts[status] += 1
            if status not in REASONS:
                continue
            source = sources[index]
            failed[source] = (status, message)
            ids = ", ".join(users[source][:MAX_EXAMPLES])
            if not skip_unreadable:
                raise PreparationError(
                    f"record {ids}: {REASONS[status]}: {source} ({message}); no manifest written. "
                    "Fix or remove the file, or pass --skip_unreadable to leave such records out"
                )
            if counts[status] <= MAX_EXAMPLES:
                LOG.warning("skipped record %s: %s: %s (%s)", ids, REASONS[status], source, message)
    seconds = time.perf_counter() - start

    splits: dict[str, list[dict]] = {}
    skipped: dict[str, list[str]] = {}
    for split, pairs in per_split.items():
        kept = []
        for raw, source in pairs:
            if source in failed:
                skipped.setdefault(REASONS[failed[source][0]], []).append(f"{raw['id']} ({source})")
                continue
            kept.append(dict(raw, image=relative_path(targets[source], out)))
        splits[split] = kept
    meta = dict(content.get("meta") or {})
    kind = f"{settings.format.upper()}" + (" 16-bit" if settings.bits == 16 else "")
    info = {
        "size": settings.size,
        "rule": "long side -> size (MONAI Resize size_mode=longest, mode=area), never upscaled",
        "format": settings.format,
        "bits": settings.bits,
        "quality": settings.quality if settings.format == "jpg" else None,
        "source_manifest": os.path.abspath(manifest),
        "source_image_format": meta.get("image_format"),
        "script_version": RESIZE_VERSION,
        "created_by": "scripts/resize_images.py",
        "images": len(tasks),
        "records_skipped": sum(len(v) for v in skipped.values()),
    }
    meta["image_format"] = f"{kind} copies, long side {settings.size} px (scripts/resize_images.py)"
    meta["resized_images"] = info
    write_manifest(new_manifest, splits, meta)

    summary = {
        "manifest": str(new_manifest),
        "source_manifest": str(manifest),
        "settings": asdict(settings),
        "workers": workers,
        "images": len(tasks),
        "written": counts[STATUS_WRITTEN],
        "already_complete": counts[STATUS_EXISTING],
        "seconds": round(seconds, 3),
        "images_per_s": round(len(tasks) / seconds, 2) if seconds > 0 else None,
        "records": {split: len(items) for split, items in splits.items()},
        "skipped": {reason: {"count": len(v), "records": v} for reason, v in sorted(skipped.items())},
        "arguments": dict(arguments or {}),
    }
    summary_path = new_manifest.with_name(f"summary_resize_{name}.json")
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    skipped_total = sum(len(v) for v in skipped.values())
    print(
        f"== resize: {len(tasks)} image(s) -> {out / IMAGES_DIR}: {counts[STATUS_WRITTEN]} written, "
        f"{counts[STATUS_EXISTING]} already complete, {skipped_total} record(s) skipped, {seconds:.1f} s "
        f"({summary['images_per_s']} images/s on {workers} worker(s))\n"
        f"manifest {new_manifest}: " + ", ".join(f"{k} {v}" for k, v in summary["records"].items()) + "\n"
        f"summary written to {summary_path}"
    )
    return summary


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resize_images.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--manifest", required=True, type=Path, help="a prepared manifest, e.g. DIR/manifests/pretrain.json"
    )
    parser.add_argument(
        "--dataset_dir",
        type=Path,
        help="the folder the manifest's paths are relative to (default: its parent's parent)",
    )
    parser.add_argument("--out", required=True, type=Path, help="new dataset_dir: OUT/images/ and OUT/manifests/")
    parser.add_argument("--size", type=int, default=256, help="long side of the copies (the training image_size)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="format of the copies of PNG/JPG sources")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality with --format jpg")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: every CPU)")
    parser.add_argument(
        "--skip_unreadable",
        action="store_true",
        help="leave records with a missing or unreadable image out of the new manifest (counted) instead of stopping",
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite every image, even complete ones")
    parser.add_argument("--name", help="name of the new manifest (default: the source manifest's)")
    parser.add_argument("--log_level", default="INFO")
    return parser


def prepare(args: argparse.Namespace) -> dict:
    settings = ResizeSettings(size=args.size, format=args.format, quality=args.quality, bits=args.bits)
    return resize_manifest(
        args.manifest,
        args.out,
        settings,
        dataset_dir=args.dataset_dir,
        workers=args.workers,
        skip_unreadable=args.skip_unreadable,
        overwrite=args.overwrite,
        name=args.name,
        arguments=record_arguments(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(prepare, build_parser(), argv)
