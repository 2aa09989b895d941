#!/usr/bin/env python
"""Dry run of a pretraining configuration: a few real steps on the user's own data before committing GPU-days.

Reads the same config files and overrides as `python -m monai.bundle run`, runs the config's preflight (text model and
tokenizer vocabulary, resume checkpoint, manifest and splits, batch size, writable directories: each failure names
its file), then on the real training data with the configured models:
- the data loader alone for --steps batches (images/s with the configured workers);
- --steps training steps of stage 1 and --steps of stage 2 through the bundle's CMCGNSTrainer, timing the wait for
  data and the compute separately (nothing is written: no checkpoint, no history, the weights are thrown away);
- peak memory, and the k-means start gate after those steps;
- the projection: time per epoch of each stage (the slower of data and compute per step times the steps per epoch)
  and for the whole schedule (stage1_epochs + stage2_epochs; validation not included).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/dry_run.py \\
        --config_file "['configs/pretrain.yaml']" --steps 20 --set dataset_dir=/data/mimic text_model_dir=/models/bert

`--set key=value` takes bundle ids (`network_def#image_encoder=vit_b16`); values are read as YAML. Prints a report and
writes it as JSON with --json.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from bundle.engines.distributed import unwrap_model  # noqa: E402
from bundle.engines.trainer import CMCGNSTrainer  # noqa: E402

logger = logging.getLogger("dry_run")


class DryRunError(RuntimeError):
    """A preflight or construction failure, with the config's own message (it names the file)."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", required=True, help="a file or a Python-style list of files, as bundle run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle id overrides")
    p.add_argument("--steps", type=int, default=10, help="training steps per stage (and loader batches)")
    p.add_argument("--json", default=None, help="write the report here too")
    args = p.parse_args(argv)
    text = args.config_file.strip()
    args.config_files = ast.literal_eval(text) if text.startswith("[") else [text]
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def build_parser(args) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in args.config_files])
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        parser[key] = yaml.safe_load(value)
    return parser


def preflight(parser: ConfigParser) -> None:
    """The config's initialize section (its preflight checks), each failure re-raised with its message."""
    try:
        parser.get_parsed_content("initialize", instantiate=True)
    except Exception as error:  # noqa: BLE001 - report any preflight failure plainly
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        raise DryRunError(f"preflight failed: {type(root).__name__}: {root}") from error


def time_loader(loader, steps: int) -> dict:
    iterator, times, images = iter(loader), [], 0
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        times.append(time.perf_counter() - t)
        images += len(batch["image"])
    total = time.perf_counter() - start
    return {"batches": len(times), "images": images, "seconds": total, "images_per_s": images / total}


def run_stage(parser, network, device, loader, stage: int, steps: int) -> dict:
    model = unwrap_model(network)
    model.set_stage(stage)
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-7)
    trainer = CMCGNSTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        epoch_length=steps,
        network=network,
        optimizer=optimizer,
        amp=bool(parser.get_parsed_content("amp")) and device.type == "cuda",
        amp_dtype=parser.get_parsed_content("amp_dtype"),
    )
    trainer.logger.setLevel(logging.WARNING)
    marks: dict[str, list[float]] = {"data": [], "compute": []}
    clock = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: clock.update(start=time.perf_counter()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: clock.update(got=time.perf_counter()))

    def done(_):
        sync()
        marks["data"].append(clock["got"] - clock["start"])
        marks["compute"].append(time.perf_counter() - clock["got"])

    trainer.add_event_handler(Events.ITERATION_COMPLETED, done)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    warm = slice(1, None) if len(marks["compute"]) > 1 else slice(None)  # the first step builds caches
    out = trainer.state.output or {}
    return {
        "stage": stage,
        "steps": len(marks["compute"]),
        "compute_s": statistics.median(marks["compute"][warm]),
        "data_wait_s": statistics.median(marks["data"][warm]),
        "loss": out.get("loss"),
        "kmeans_initialized": bool(out.get("kmeans_initialized", 0.0)),
        **memory(device),
    }


def memory(device) -> dict:
    if device.type == "cuda":
        return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_process_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def dry_run(args) -> dict:
    parser = build_parser(args)
    preflight(parser)
    try:
        device = parser.get_parsed_content("device")
        batch_size = int(parser.get_parsed_content("batch_size"))
        build_start = time.perf_counter()
        loader = parser.get_parsed_content("train#dataloader")  # CacheDataset fills its cache here
        cache_s = time.perf_counter() - build_start
        network = parser.get_parsed_content("network")
    except Exception as error:  # noqa: BLE001
        raise DryRunError(f"building the run failed: {type(error).__name__}: {error}") from error
    n_train = len(parser.get_parsed_content("train#datalist"))
    steps_per_epoch = int(parser.get_parsed_content("train#epoch_length"))  # the config's own (drop_last, ranks)
    epochs = {1: int(parser.get_parsed_content("stage1_epochs")), 2: int(parser.get_parsed_content("stage2_epochs"))}
    loader_figures = time_loader(loader, args.steps)
    model = unwrap_model(network)
    stages = [run_stage(parser, network, device, loader, s, args.steps) for s in (1, 2) if epochs[s] > 0]
    state = model.report_loss.state
    start_step = int(model.report_loss.start_step)
    for s in stages:
        s["step_s"] = max(s["compute_s"], s["data_wait_s"])
        s["bound_by"] = "data" if s["data_wait_s"] > s["compute_s"] else "compute"
        s["epoch_minutes"] = steps_per_epoch * s["step_s"] / 60
        s["images_per_s"] = batch_size / s["step_s"]
    total = sum(epochs[s["stage"]] * s["epoch_minutes"] for s in stages)
    return {
        "configs": args.config_files,
        "overrides": args.set,
        "device": str(device),
        "image_encoder": parser.get("network_def#image_encoder", type(model.image_encoder).__name__),
        "parameters_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "training_images": n_train,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "epochs": {"stage1": epochs[1], "stage2": epochs[2]},
        "cache_seconds": cache_s,
        "loader": loader_figures,
        "stages": stages,
        "kmeans": {
            "initialized": bool(state.initialized),
            "steps_seen": int(state.step),
            "start_step": start_step,
            "start_cosine": float(model.report_loss.start_cosine),
            "note": "the gate opens once steps_seen >= start_step and the mean cosine falls to start_cosine",
        },
        "projected_schedule_hours": total / 60,
    }


def report_lines(r: dict) -> list[str]:
    lines = [
        f"dry run on {r['device']}: {r['image_encoder']}, {r['parameters_millions']:.1f} M parameters, "
        f"{r['training_images']} training images, batch {r['batch_size']} -> {r['steps_per_epoch']} steps per epoch",
        f"data loader alone: {r['loader']['images_per_s']:.1f} images/s over {r['loader']['batches']} batches "
        f"(cache built in {r['cache_seconds']:.1f} s)",
    ]
    for s in r["stages"]:
        memory = s.get("peak_gpu_memory_gib", s.get("peak_process_memory_gib"))
        lines.append(
            f"stage {s['stage']}: compute {s['compute_s']:.3f} s/step, waiting for data {s['data_wait_s']:.3f} s/step "
            f"({s['bound_by']}-bound), {s['images_per_s']:.1f} images/s, peak memory {memory:.2f} GiB, "
            f"loss {s['loss']:.3f} -> epoch {s['epoch_minutes']:.1f} min"
        )
    k = r["kmeans"]
    lines += [
        f"k-means: initialised {k['initialized']} after {k['steps_seen']} steps (start_step {k['start_step']}, "
        f"start_cosine {k['start_cosine']})",
        f"projected schedule ({r['epochs']['stage1']} + {r['epochs']['stage2']} epochs, validation not included): "
        f"{r['projected_schedule_hours']:.2f} h",
    ]
    return lines


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = dry_run(args)
    except DryRunError as error:
        print(f"dry run stopped: {error}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
