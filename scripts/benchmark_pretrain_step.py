#!/usr/bin/env python
"""Time the whole CM-CGNS pretraining step at paper settings on synthetic inputs.

The network is configs/pretrain.yaml's network_def (ResNet-50, D = 768, K = 128, the fixed-mode switches) with a
randomly initialised BERT-base-sized text encoder (12 layers, width 768, vocabulary 30522: the architecture of the
CXR-BERT / BioClinicalBERT models the bundle uses, random weights, nothing downloaded). Each step runs through the
bundle's CMCGNSTrainer (`monai.engines` / Ignite): host-to-device copy, forward, loss, finite check, backward, Adam
step, the k-means update (centroids initialised beforehand, so the hard negatives and BML are in every step) and the
scalar logging, exactly as in `python -m monai.bundle run` with configs/pretrain.yaml.

Reported per stage (1: alignment losses; 2: + CM-MIR reconstruction):
- step time and images/s (median over --steps timed steps after --warmup);
- the split: the encoders' forward + backward alone vs everything after them (step - encoders);
- host synchronisations per step: calls that make the host wait for the device (`.item()`, `bool()`, `int()`,
  `float()`, `.tolist()`, `.cpu()`, `.numpy()`, `nonzero`, boolean-mask indexing, `bincount`, `unique`, ...),
  counted with a torch function mode over one steady-state step; on CUDA also checked with
  torch.cuda.set_sync_debug_mode;
- peak memory (CUDA: max allocated; CPU: the process's peak resident set, which includes building the model);
- stage 1 again with the published per-report loops for everything after the encoders
  (bundle/losses/reference.py) for the ratio.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/benchmark_pretrain_step.py              # CPU: B = 4
    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/benchmark_pretrain_step.py --batch 64   # CUDA + bf16 by default

Writes pretrain_step_benchmark_<device>.{json,md} under --out (docs/results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from bundle.engines.trainer import CMCGNSTrainer  # noqa: E402
from bundle.losses.reference import loop_alignment_losses  # noqa: E402

MIMIC_TRAIN_IMAGES = 377_110  # method.md / the issue: the MIMIC-CXR training images of the protocol
# calls that wait for the device (a boolean-mask __getitem__ / __setitem__ is counted separately)
SYNC_CALLS = {
    "item",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "masked_select",
    "unique",
    "bincount",
    "repeat_interleave",
    "allclose",
    "equal",
}


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor calls that need a tensor's value on the host, by call site, over the `with` block.

    On CUDA only calls on CUDA tensors count (those are the real synchronisations; Adam's step counters, for
    example, live on the CPU). On a CPU run every such call counts, so the CPU figure is an upper bound: the sites
    say which would be device reads on a GPU.
    """

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.sites: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNC_CALLS:
            key = name
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_index(args[1]):
            key = f"{name}[bool mask]"
        else:
            key = None
        if key is not None and (self.device.type == "cpu" or _on_device(args)):
            site = f"{key} at {call_site()}"
            self.sites[site] = self.sites.get(site, 0) + 1
        return func(*args, **(kwargs or {}))


def _on_device(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)


def call_site() -> str:
    """Where the call was made: the innermost frame in the bundle's code (path:line), or the library it happened in
    and the bundle line that called into it."""
    frames = [f for f in traceback.extract_stack() if Path(f.filename).resolve() != Path(__file__).resolve()]

    def in_bundle(frame) -> bool:
        path = Path(frame.filename).resolve()
        return ROOT in path.parents and ".venv" not in path.parts

    inner = frames[-1]
    caller = next((f for f in reversed(frames) if in_bundle(f)), None)
    where = f"{Path(caller.filename).resolve().relative_to(ROOT)}:{caller.lineno}" if caller else "?"
    if in_bundle(inner):
        return where
    library = inner.filename.split("site-packages/")[-1].split("/")[0]
    return f"{library} (from {where})"


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def random_bert_dir(folder: Path, layers: int, width: int, vocab_size: int) -> Path:
    """A BERT of the given size with random weights and a real WordPiece vocabulary file of vocab_size entries."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [f"w{i}" for i in range(vocab_size - len(specials))]
    BertModel(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 64),
            intermediate_size=4 * width,
        )
    ).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def synthetic_batch(args, generator: torch.Generator) -> dict:
    """A collated pretraining batch as TokenizeReportd + the image transforms produce it (CPU tensors)."""
    b, length = args.batch, args.length
    input_ids = torch.zeros(b, length, dtype=torch.long)
    attention = torch.zeros(b, length, dtype=torch.long)
    sentence_index = torch.full((b, length), -1, dtype=torch.long)
    num_sentences = torch.randint(args.min_sentences, args.max_sentences + 1, (b,), generator=generator)
    for row in range(b):  # building the synthetic input, not part of the timed step
        pos = 1
        for k in range(1, int(num_sentences[row]) + 1):
            n = int(torch.randint(4, 20, (1,), generator=generator))
            n = min(n, length - 1 - pos)
            if n <= 0:
                num_sentences[row] = k - 1
                break
            sentence_index[row, pos : pos + n] = k
            pos += n
        input_ids[row, 1:pos] = torch.randint(5, args.vocab_size, (pos - 1,), generator=generator)
        input_ids[row, 0], input_ids[row, pos] = 2, 3  # [CLS] ... [SEP]
        attention[row, : pos + 1] = 1
    image = torch.rand(b, 1, args.image_size, args.image_size, generator=generator) * 2 - 1
    return {
        "image": image,
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": torch.zeros_like(input_ids),
        "sentence_index": sentence_index,
        "num_sentences": num_sentences,
        "id": [f"synthetic-{i}" for i in range(b)],
    }


def build_network(args, text_dir: Path, device: torch.device) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "pretrain.yaml"))
    parser["bundle_root"] = str(ROOT)
    parser["text_model_dir"] = str(text_dir)
    parser["crop_size"] = args.image_size
    parser["network_def#image_encoder"] = args.image_encoder
    parser["network_def#compute_diagnostics"] = not args.no_diagnostics
    torch.manual_seed(0)
    model = parser.get_parsed_content("network_def").to(device)
    state = model.report_loss.state  # initialised k-means: every step has the update, hard negatives and BML
    state.centroids.copy_(F.normalize(torch.randn(state.num_clusters, state.dim, device=device), dim=-1))
    state.initialized.fill_(True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Wall time of each trainer iteration (device synchronised at both ends)."""

    def __init__(self, trainer: CMCGNSTrainer, device: torch.device):
        self.times: list[float] = []
        self._start = 0.0
        trainer.add_event_handler(Events.ITERATION_STARTED, self._begin)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._end)
        self.device = device

    def _begin(self, _):
        _sync(self.device)
        self._start = time.perf_counter()

    def _end(self, _):
        _sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def run_steps(model, batch, args, device, steps: int, count_syncs: bool = False) -> tuple[list[float], dict]:
    """`steps` iterations of the bundle's trainer on the same batch; (step times, host-sync counts of the last)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-6)
    trainer = CMCGNSTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch] * steps,
        network=model,
        optimizer=optimizer,
        amp=args.amp,
        amp_dtype=args.amp_dtype,
    )
    trainer.logger.setLevel(logging.WARNING)
    timer = StepTimer(trainer, device)
    counter = HostSyncCounter(torch.device(device))
    if count_syncs:
        trainer.add_event_handler(Events.ITERATION_STARTED(once=steps), lambda _: counter.__enter__())
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=steps), lambda _: counter.__exit__(None, None, None))
    trainer.run()
    return timer.times, counter.sites


def encoder_times(model, batch, args, device, steps: int) -> list[float]:
    """Forward + backward of the two encoders alone (the part no loss implementation can change)."""
    image = batch["image"].to(device)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        with autocast(args, device):
            local, global_, tokens = model.encode(image, ids, mask)
            total = local.float().mean() + global_.float().mean() + tokens.float().mean()
        total.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def autocast(args, device):
    if args.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, args.amp_dtype))
    return contextlib.nullcontext()


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"cuda_max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"cpu_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def cuda_sync_warnings(model, batch, args, device) -> int | None:
    """Synchronising CUDA calls in one step, as torch.cuda.set_sync_debug_mode reports them."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_steps(model, batch, args, device, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def stage_figures(model, batch, args, device, stage: int) -> dict:
    model.set_stage(stage)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, _ = run_steps(model, batch, args, device, args.warmup + args.steps)
    _, syncs = run_steps(model, batch, args, device, 2, count_syncs=True)
    step = statistics.median(times[args.warmup :])
    enc = statistics.median(encoder_times(model, batch, args, device, args.warmup + args.steps)[args.warmup :])
    return {
        "stage": stage,
        "step_s": step,
        "step_min_s": min(times[args.warmup :]),
        "images_per_s": args.batch / step,
        "encoders_s": enc,
        "after_encoders_s": max(step - enc, 0.0),
        "after_encoders_share": max(step - enc, 0.0) / step,
        "host_syncs_per_step": sum(syncs.values()),
        "host_syncs_in_bundle_code": sum(v for k, v in syncs.items() if " (from " not in k),
        "host_syncs_by_site": syncs,
        "cuda_sync_debug_warnings": cuda_sync_warnings(model, batch, args, device),
        **peak_memory(device),
    }


def loop_figures(model, batch, args, device) -> dict:
    """Stage 1 with the per-report loops after the encoders (the published code's structure)."""
    model.set_stage(1)
    batched = model.losses_from_features

    def looped(image, local, global_, tokens, sentence_index, return_attention=False):
        return loop_alignment_losses(model, local, global_, tokens, sentence_index)

    model.losses_from_features = looped
    try:
        times, _ = run_steps(model, batch, args, device, args.warmup + args.loop_steps)
    finally:
        model.losses_from_features = batched
    step = statistics.median(times[args.warmup :])
    return {"step_s": step, "images_per_s": args.batch / step}


def machine() -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    out = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15min": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def write_report(record: dict, out: Path) -> Path:
    d, w = record["device"], record["workload"]
    lines = [
        f"# Pretraining step benchmark ({d})",
        "",
        "Written by `scripts/benchmark_pretrain_step.py`: the whole training step of configs/pretrain.yaml's network "
        "through the bundle's CMCGNSTrainer on synthetic inputs (random weights of the paper's architectures; "
        "k-means initialised, so every step updates centroids and uses hard negatives and BML).",
        "",
        f"Workload: B = {w['batch']}, {w['image_encoder']} at {w['image_size']} px, text encoder BERT-base size "
        f"({w['text_layers']} layers, width {w['text_width']}), L = {w['length']} tokens, {w['sentences']} "
        f"sentences in the batch, AMP {w['amp_dtype'] if w['amp'] else 'off'}, diagnostics "
        f"{'off' if w['no_diagnostics'] else 'on'}, channels_last {w['channels_last']}.",
        f"Machine: {record['machine']}.",
        "",
        "| stage | step (median) | images/s | encoders fwd+bwd | after the encoders | share after encoders | "
        "host syncs / step (in bundle code) | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in record["stages"]:
        memory = s.get("cuda_max_allocated_gib", s.get("cpu_peak_rss_gib"))
        kind = "GPU max allocated" if "cuda_max_allocated_gib" in s else "process peak RSS"
        lines.append(
            f"| {s['stage']} | {s['step_s'] * 1000:.0f} ms | {s['images_per_s']:.1f} | {s['encoders_s'] * 1000:.0f} ms "
            f"| {s['after_encoders_s'] * 1000:.0f} ms | {s['after_encoders_share'] * 100:.1f} % | "
            f"{s['host_syncs_per_step']} ({s['host_syncs_in_bundle_code']}) | {memory:.2f} GiB ({kind}) |"
        )
    loop = record["loop_stage1"]
    lines += [
        "",
        f"Stage 1 with the published per-report loops after the encoders: {loop['step_s'] * 1000:.0f} ms per step "
        f"({loop['images_per_s']:.1f} images/s); the batched step is {record['loop_over_batched_stage1']:.2f}x "
        "faster as a whole step.",
        "",
        "Host synchronisations in one steady-state step, by call and site"
        + (" (on the CPU every host read counts: an upper bound of the GPU's)" if d == "cpu" else "")
        + ":",
        "",
    ]
    for s in record["stages"]:
        calls = "; ".join(f"{k} ({v})" for k, v in sorted(s["host_syncs_by_site"].items())) or "none"
        extra = (
            f"; torch.cuda sync debug mode: {s['cuda_sync_debug_warnings']} warnings"
            if s["cuda_sync_debug_warnings"] is not None
            else ""
        )
        lines.append(f"- stage {s['stage']}: {calls}{extra}")
    p = record["projection"]
    lines += [
        "",
        f"Projected MIMIC-CXR epoch ({MIMIC_TRAIN_IMAGES} training images) at these step times, compute only (data "
        f"loading not included; see data_pipeline_benchmark.md): stage 1 {p['stage1_epoch_min']:.1f} min, stage 2 "
        f"{p['stage2_epoch_min']:.1f} min per {d} device.",
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    path = out / f"pretrain_step_benchmark_{d}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch", type=int, default=64 if cuda else 4)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--image_encoder", default="resnet50")
    p.add_argument("--text_layers", type=int, default=12)
    p.add_argument("--text_width", type=int, default=768)
    p.add_argument("--vocab_size", type=int, default=30522)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--min_sentences", type=int, default=4)
    p.add_argument("--max_sentences", type=int, default=12)
    p.add_argument("--amp", type=int, default=1 if cuda else 0, help="1: autocast on CUDA")
    p.add_argument("--amp_dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--no_diagnostics", action="store_true", help="network_def#compute_diagnostics false")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--loop_steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(args, generator)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model = build_network(
            args, random_bert_dir(Path(folder), args.text_layers, args.text_width, args.vocab_size), device
        )
    print(f"model built in {time.perf_counter() - start:.0f} s; B={args.batch} on {device}", flush=True)
    stages = []
    for stage in (1, 2):
        stages.append(stage_figures(model, batch, args, device, stage))
        s = stages[-1]
        print(
            f"stage {stage}: {s['step_s'] * 1000:.0f} ms/step, {s['images_per_s']:.1f} images/s, after encoders "
            f"{s['after_encoders_share'] * 100:.1f} %, {s['host_syncs_per_step']} host syncs "
            f"({s['host_syncs_in_bundle_code']} in bundle code)",
            flush=True,
        )
    loop = loop_figures(model, batch, args, device)
    print(f"stage 1 with per-report loops: {loop['step_s'] * 1000:.0f} ms/step", flush=True)
    record = {
        "device": device.type,
        "workload": {
            **{k: getattr(args, k) for k in ("batch", "image_size", "image_encoder", "text_layers", "text_width")},
            **{k: getattr(args, k) for k in ("length", "no_diagnostics", "channels_last", "amp_dtype")},
            "amp": bool(args.amp and device.type == "cuda"),
            "sentences": int(batch["num_sentences"].sum()),
        },
        "machine": machine(),
        "stages": stages,
        "loop_stage1": loop,
        "loop_over_batched_stage1": loop["step_s"] / stages[0]["step_s"],
        "projection": {f"stage{s['stage']}_epoch_min": MIMIC_TRAIN_IMAGES / s["images_per_s"] / 60 for s in stages},
        "command": "python scripts/benchmark_pretrain_step.py " + " ".join(argv),
        "seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"pretrain_step_benchmark_{device.type}.json").write_text(
        json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(write_report(record, args.out).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
