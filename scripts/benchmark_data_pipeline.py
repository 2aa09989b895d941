"""Can the data pipeline feed a GPU at MIMIC-CXR scale? Decode + training transforms per worker, full-size vs
pre-resized images (scripts/resize_images.py), and the workers that rate needs.

MIMIC-CXR-JPG holds 377,110 JPGs of about 2500 x 3000 8-bit grey pixels (about 1.5 MB each); pretraining reads
each image with LoadRadiographd and applies radiograph_transforms with the configs/pretrain.yaml settings (resize
the long side to image_size 256, pad to a square, random crop 224, intensity to [-1, 1]), batch 64. This script:
1. writes --images synthetic MIMIC-like JPGs (smooth chest-like structure + noise, JPEG quality 95, so that file
   size and decode cost are realistic) in a temporary folder, with a manifest;
2. makes the pre-resized copy with the real resize step (bundle.data.prepare.resize_images, one worker; its rate is
   the one-time cost of pre-resizing);
3. times LoadRadiographd (decode) and the training transforms (train=True, the tokenizer left out) per image in ONE
   process with one torch thread, for the full-size files and for the copies; checks that the eval crops of both
   agree (the copy is a faithful input);
4. optionally (--workers W) times a torch DataLoader (batch 64, W worker processes) on both;
5. projects: workers per GPU for --target_images_per_s (default 377110 / 1200 s: a MIMIC epoch in 20 minutes) and
   the epoch time with --node_workers workers at the measured per-worker rate (linear scaling assumed).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/benchmark_data_pipeline.py [--images 16] [--workers 0] \
        [--out docs/results]

Writes data_pipeline_benchmark.json and .md under --out. The default run takes about half a minute on one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, as in a loader worker

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import PIL
import torch
import yaml
from PIL import Image

from bundle.data.image_io import LoadRadiographd, radiograph_transforms
from bundle.data.manifest import load_manifest, write_manifest
from bundle.data.prepare.resize_images import ResizeSettings, resize_manifest

MIMIC_IMAGES = 377110


def pretrain_settings(config: Path) -> dict:
    """image_size, crop_size and batch_size as configs/pretrain.yaml sets them (plain values at its top level)."""
    content = yaml.safe_load(config.read_text(encoding="utf-8"))
    return {key: int(content[key]) for key in ("image_size", "crop_size", "batch_size")}


def synthetic_radiograph(rng: np.random.Generator, noise: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [height, width]: dark lungs, bright mediastinum, rib bands and texture at 1/16 resolution, bicubic
    upsampled, plus a shifted copy of a shared full-size noise field (fast; JPEG cannot exploit the repetition)."""
    lh, lw = height // 16, width // 16
    y, x = np.mgrid[0:lh, 0:lw].astype(np.float32)
    y, x = y / lh, x / lw
    shift = rng.uniform(-0.04, 0.04, 4)
    img = 90 + 60 * y + rng.uniform(-15, 15)
    for cx in (0.3 + shift[0], 0.7 + shift[1]):
        img -= 70 * np.exp(-((((x - cx) / 0.16) ** 2 + ((y - 0.42 - shift[2]) / 0.25) ** 2) ** 2))
    img += 80 * np.exp(-(((x - 0.5 - shift[3]) / 0.07) ** 2))
    img += 12 * np.sin(y * 40 * np.pi + 3 * np.sin(x * 6)) * (np.abs(x - 0.5) > 0.08)
    img += rng.normal(0, 6, (lh, lw)).astype(np.float32)
    big = np.asarray(Image.fromarray(img, mode="F").resize((width, height), Image.Resampling.BICUBIC))
    offset = tuple(int(v) for v in rng.integers(0, 512, 2))
    big = big + np.roll(noise[:height, :width], offset, axis=(0, 1))
    return np.clip(big, 0, 255).astype(np.uint8)


def make_dataset(folder: Path, count: int, height: int, width: int, quality: int, seed: int) -> tuple[Path, dict]:
    """folder/files/pXX/<id>.jpg and folder/manifests/pretrain.json; returns the manifest and file statistics."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((height + 128, width + 128), dtype=np.float32) * 2.0
    items, sizes, shapes = [], [], []
    start = time.perf_counter()
    for n in range(count):
        h = height + int(rng.integers(-120, 121))
        w = width + int(rng.integers(-120, 121))
        path = folder / "files" / f"p{10 + n % 10}" / f"synthetic{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_radiograph(rng, noise, h, w)).save(path, format="JPEG", quality=quality)
        items.append({"image": path.relative_to(folder).as_posix(), "id": f"synthetic{n:05d}", "report": "x"})
        sizes.append(path.stat().st_size)
        shapes.append((h, w))
    manifest = folder / "manifests" / "pretrain.json"
    write_manifest(manifest, {"training": items}, {"source": "synthetic MIMIC-like JPGs"})
    stats = {
        "count": count,
        "mean_shape_rows_columns": [
            round(statistics.mean(s[0] for s in shapes)),
            round(statistics.mean(s[1] for s in shapes)),
        ],
        "mean_file_mb": statistics.mean(sizes) / 1e6,
        "jpeg_quality": quality,
        "seconds_to_generate": time.perf_counter() - start,
    }
    return manifest, stats


def time_pipeline(items: list[dict], settings: dict, passes: int, seed: int) -> tuple[dict, list[np.ndarray]]:
    """Per-image decode and transform times in this process (the training transforms, train=True), on the wall clock
    and as CPU time of this process (what one worker owning a core would take, whatever else runs on the machine),
    and the eval (centre) crops of the last pass for the fidelity check (computed outside the timed parts)."""
    load = LoadRadiographd(keys="image")
    train = radiograph_transforms(("image",), settings["image_size"], settings["crop_size"], train=True)
    evaluate = radiograph_transforms(("image",), settings["image_size"], settings["crop_size"], train=False)
    for transform in train:
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed)

    def apply(transforms, data):
        for transform in transforms:
            data = transform(data)
        return data

    apply(train, load(dict(items[0])))  # warm-up (first-call imports and allocations)
    wall = {"decode": [], "transforms": []}
    cpu = {"decode": [], "transforms": []}
    crops = []
    for p in range(passes):
        for item in items:
            t0, c0 = time.perf_counter(), time.process_time()
            data = load(dict(item))
            t1, c1 = time.perf_counter(), time.process_time()
            out = apply(train, dict(data))
            t2, c2 = time.perf_counter(), time.process_time()
            if out["image"].shape != (1, settings["crop_size"], settings["crop_size"]):
                raise AssertionError(f"{item['image']}: transform output {tuple(out['image'].shape)}")
            wall["decode"].append(t1 - t0)
            wall["transforms"].append(t2 - t1)
            cpu["decode"].append(c1 - c0)
            cpu["transforms"].append(c2 - c1)
            if p == passes - 1:
                crops.append(apply(evaluate, dict(data))["image"].numpy())
    result = {"images_timed": len(wall["decode"]), "passes": passes}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        total = [a + b for a, b in zip(times["decode"], times["transforms"])]
        result[clock] = {
            "decode_ms_median": 1e3 * statistics.median(times["decode"]),
            "transforms_ms_median": 1e3 * statistics.median(times["transforms"]),
            "per_image_ms_median": 1e3 * statistics.median(total),
            "per_image_ms_mean": 1e3 * statistics.mean(total),
            "images_per_s_per_worker": len(total) / sum(total),
        }
    return result, crops


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items, transforms):
        self.items, self.transforms = items, transforms

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        data = dict(self.items[index])
        for transform in self.transforms:
            data = transform(data)
        return {"image": data["image"].as_tensor()}


def time_loader(items: list[dict], settings: dict, workers: int, batch: int) -> dict:
    """images/s through a DataLoader (worker processes, collate, transfer to the main process), wall clock from the
    first batch on (worker start-up left out), over 3 batches at least."""
    transforms = [LoadRadiographd(keys="image")] + radiograph_transforms(
        ("image",), settings["image_size"], settings["crop_size"], train=True
    )
    count = max(len(items), 3 * batch)
    data = [items[i % len(items)] for i in range(count)]
    loader = torch.utils.data.DataLoader(
        _Items(data, transforms), batch_size=batch, num_workers=workers, worker_init_fn=_one_thread
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    seen = sum(int(b["image"].shape[0]) for b in iterator)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "batch_size": batch,
        "images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds,
        "images_per_s_per_worker": seen / seconds / workers,
    }


def machine_info() -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import monai
    from PIL import features

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
    }


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def projection(rate: float, target: float, node_workers: int, dataset_images: int) -> dict:
    return {
        "workers_per_gpu_for_target": math.ceil(target / rate),
        "epoch_minutes_with_node_workers": dataset_images / (rate * node_workers) / 60,
        "node_images_per_s": rate * node_workers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="synthetic full-size JPGs")
    parser.add_argument("--height", type=int, default=3000, help="rows of the synthetic images (+- 120)")
    parser.add_argument("--width", type=int, default=2500, help="columns of the synthetic images (+- 120)")
    parser.add_argument("--jpeg_quality", type=int, default=95, help="quality of the synthetic full-size JPGs")
    parser.add_argument("--resized_passes", type=int, default=4, help="passes over the small copies (they are fast)")
    parser.add_argument("--resize_format", choices=("png", "jpg"), default="png", help="format of the copies")
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with W workers (0: skip)")
    parser.add_argument("--loader_batch", type=int, default=0, help="DataLoader batch (0: batch_size of --config)")
    parser.add_argument("--target_images_per_s", type=float, default=MIMIC_IMAGES / (20 * 60))
    parser.add_argument("--node_workers", type=int, default=16, help="loader workers of a node for the epoch time")
    parser.add_argument("--dataset_images", type=int, default=MIMIC_IMAGES)
    parser.add_argument("--config", type=Path, default=Path("configs/pretrain.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = pretrain_settings(args.config)
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 python " + shlex.join(
        [os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0]) else sys.argv[0], *sys.argv[1:]]
    )
    load_before = load_average()
    load_1min_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"pretraining settings from {args.config}: {settings}; {args.images} images, torch threads 1")

    with tempfile.TemporaryDirectory(prefix="data_pipeline_benchmark_") as folder:
        folder = Path(folder)
        manifest, files = make_dataset(
            folder / "full", args.images, args.height, args.width, args.jpeg_quality, args.seed
        )
        print(
            f"generated {args.images} JPGs, mean {files['mean_file_mb']:.2f} MB, "
            f"in {files['seconds_to_generate']:.1f} s"
        )
        resize_settings = ResizeSettings(size=settings["image_size"], format=args.resize_format)
        cpu0 = time.process_time()
        resize_summary = resize_manifest(manifest, folder / "resized", resize_settings, workers=1)
        resize_cpu_s = time.process_time() - cpu0
        full_items = load_manifest(manifest, "training")
        small_items = load_manifest(folder / "resized" / "manifests" / "pretrain.json", "training")
        small_kb = statistics.mean(os.path.getsize(i["image"]) for i in small_items) / 1e3
        full, full_crops = time_pipeline(full_items, settings, 1, args.seed)
        small, small_crops = time_pipeline(small_items, settings, args.resized_passes, args.seed)
        for name, r in (("full-size", full), ("resized", small)):
            print(
                f"{name:9s}: {r['cpu']['images_per_s_per_worker']:.1f} images/s per worker on CPU time, "
                f"{r['wall']['images_per_s_per_worker']:.1f} on the wall clock"
            )
        max_diff = max(float(np.abs(a - b).max()) for a, b in zip(full_crops, small_crops))
        loader = {}
        if args.workers > 0:
            for name, items in (("full", full_items), ("resized", small_items)):
                loader[name] = time_loader(items, settings, args.workers, args.loader_batch or settings["batch_size"])
                print(f"DataLoader {name}: {loader[name]['images_per_s']:.1f} images/s with {args.workers} workers")

    target = args.target_images_per_s
    ratio = {c: small[c]["images_per_s_per_worker"] / full[c]["images_per_s_per_worker"] for c in ("cpu", "wall")}
    proj = {
        clock: {
            name: projection(r[clock]["images_per_s_per_worker"], target, args.node_workers, args.dataset_images)
            for name, r in (("full", full), ("resized", small))
        }
        for clock in ("cpu", "wall")
    }
    resize_rate = {"cpu": args.images / resize_cpu_s, "wall": resize_summary["images_per_s"]}
    resize_hours = {c: args.dataset_images / (r * args.node_workers) / 3600 for c, r in resize_rate.items()}
    machine = machine_info()
    load_after = load_average()
    load_1min_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    record = {
        "command": command,
        "settings": dict(settings, train_transforms="LoadRadiographd + radiograph_transforms(train=True)"),
        "machine": machine,
        "load_average_1_5_15min": {"before": load_before, "after": load_after},
        "files": dict(files, mean_resized_kb=small_kb, resize_format=args.resize_format),
        "full_size": full,
        "resized": small,
        "speedup_resized_vs_full": ratio,
        "eval_crop_max_abs_difference_full_vs_resized": max_diff,
        "resize_step": {
            "images_per_s_per_worker": resize_rate,
            "projected_hours_for_dataset_with_node_workers": resize_hours,
        },
        "dataloader": loader,
        "projection": {
            "basis": "cpu: CPU time of the one worker process (a worker owning a core); wall: wall clock here",
            "target_images_per_s": target,
            "node_workers": args.node_workers,
            "dataset_images": args.dataset_images,
            **proj,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_pipeline_benchmark.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    def row(name, r, clock, p):
        t = r[clock]
        return (
            f"| {name} | {clock} | {t['decode_ms_median']:.1f} | {t['transforms_ms_median']:.1f} | "
            f"{t['per_image_ms_median']:.1f} | **{t['images_per_s_per_worker']:.1f}** | "
            f"{p['workers_per_gpu_for_target']} | {p['epoch_minutes_with_node_workers']:.1f} |"
        )

    small_name = f"pre-resized {args.resize_format.upper()} ({settings['image_size']} px long side)"
    lines = [
        "# Data-pipeline benchmark: full-size vs pre-resized MIMIC-like images",
        "",
        "Written by `scripts/benchmark_data_pipeline.py`:",
        "",
        "```",
        command,
        "```",
        "",
        f"Workload: {files['count']} synthetic MIMIC-like 8-bit grey JPGs of about "
        f"{files['mean_shape_rows_columns'][0]} x {files['mean_shape_rows_columns'][1]} (rows x columns), quality "
        f"{files['jpeg_quality']}, mean {files['mean_file_mb']:.2f} MB (MIMIC-CXR-JPG: about 1.5 MB); copies made by "
        f"`scripts/resize_images.py --size {settings['image_size']} --format {args.resize_format}` (mean "
        f"{small_kb:.0f} kB). Per image: `LoadRadiographd` (decode) then the training transforms of "
        f"configs/pretrain.yaml (`radiograph_transforms(image_size={settings['image_size']}, "
        f"crop_size={settings['crop_size']}, train=True)`), tokenizer left out, in ONE process with one torch thread "
        "(= one loader worker).",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"torch {machine['torch']}, MONAI {machine['monai']}, Pillow {machine['pillow']} "
        f"(libjpeg-turbo: {machine['libjpeg_turbo']}). Load average (1 / 5 / 15 min) before: {load_before}, "
        f"after: {load_after}.",
        "",
        "Two clocks: **cpu** = CPU time of the worker process, i.e. the rate of a worker that owns a core (robust to "
        "other jobs on the machine); **wall** = wall clock on this machine as it was loaded.",
        "",
        f"| images | clock | decode ms (median) | transforms ms (median) | total ms (median) | images/s per worker | "
        f"workers per GPU for {target:.0f} images/s | epoch minutes with {args.node_workers} workers |",
        "|---|---|---|---|---|---|---|---|",
        row("full-size JPG", full, "cpu", proj["cpu"]["full"]),
        row(small_name, small, "cpu", proj["cpu"]["resized"]),
        row("full-size JPG", full, "wall", proj["wall"]["full"]),
        row(small_name, small, "wall", proj["wall"]["resized"]),
        "",
        f"Pre-resized / full-size per-worker rate: **{ratio['cpu']:.1f}x** (cpu), {ratio['wall']:.1f}x (wall). "
        f"Images/s per worker = images timed / their total time ({full['images_timed']} full-size images, "
        f"{small['images_timed']} resized ones over {small['passes']} passes). Workers per GPU = "
        f"ceil({target:.0f} / rate); epoch minutes = {args.dataset_images:,} / (rate x {args.node_workers}) / 60; "
        "both assume linear scaling over workers and a GPU that never waits. "
        f"Target {target:.0f} images/s = {args.dataset_images:,} images in "
        f"{args.dataset_images / target / 60:.0f} minutes per epoch.",
        "",
        f"Fidelity: the eval (centre) crops of the full-size files and of their copies differ by at most "
        f"{max_diff:.4f} in [-1, 1] (the 8-bit rounding of the copy allows {1 / 255:.4f}).",
        "",
        f"One-time cost of pre-resizing (read + decode + resize + {args.resize_format.upper()} write, one worker): "
        f"{resize_rate['cpu']:.1f} images/s (cpu), {resize_rate['wall']:.1f} (wall), i.e. about "
        f"{resize_hours['cpu']:.1f} h for {args.dataset_images:,} images with {args.node_workers} workers.",
    ]
    if loader:
        batch = args.loader_batch or settings["batch_size"]
        lines += ["", f"DataLoader (batch {batch}, {args.workers} workers, collate included, wall):"]
        for name, r in loader.items():
            lines.append(
                f"- {name}: {r['images_per_s']:.1f} images/s ({r['images_per_s_per_worker']:.1f} per worker, "
                f"{r['images']} images)"
            )
    copies_gb = small_kb * args.dataset_images / 1e6
    busy = max(load_1min_before, load_1min_after)
    shared = (
        f"The 1-minute load average reached {busy:.1f} on {machine['cpu_count']} CPUs: other work shared the machine, "
        "so the wall-clock rates are pessimistic; the cpu rows are the per-core figures. "
        if busy > 0.75 * (machine["cpu_count"] or 1)
        else ""
    )
    lines += [
        "",
        f"Notes: {shared}Real MIMIC reads also pay for the file system ({args.dataset_images:,} x "
        f"{files['mean_file_mb']:.1f} MB = {files['mean_file_mb'] * args.dataset_images / 1e3:.0f} GB of JPGs vs "
        f"about {copies_gb:.0f} GB of copies), which this local-disk benchmark does not measure and which favours the "
        "copies further. Tokenisation (TokenizeReportd), collation and the transfer to the main process are the same "
        "for both and not included (see --workers for a DataLoader measurement).",
        "",
    ]
    (args.out / "data_pipeline_benchmark.md").write_text("\n".join(lines))
    print(
        f"ratio {ratio['cpu']:.1f}x (cpu) / {ratio['wall']:.1f}x (wall); workers per GPU for {target:.0f} images/s "
        f"(cpu): full {proj['cpu']['full']['workers_per_gpu_for_target']}, "
        f"resized {proj['cpu']['resized']['workers_per_gpu_for_target']}; "
        f"wrote {args.out / 'data_pipeline_benchmark.md'} and .json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
