#!/usr/bin/env python
"""`make demo`: build the demo data if needed, run demo pretraining through `python -m monai.bundle run`, plot it.

    python scripts/run_demo.py --out demo_data [any further bundle overrides, e.g. --stage1_epochs 1]

1. DIR/manifests/pretrain.json missing -> scripts/make_demo_data.py --out DIR generates the demo dataset.
2. Demo pretraining: configs/pretrain.yaml + configs/demo_pretrain.yaml on DIR (writes models/ and runs/pretrain_demo/).
3. The loss curves of the run's history.jsonl go to runs/pretrain_demo/loss_curves.png.
4. Prints where the checkpoints, the TensorBoard logs and the PNG are, the final validation retrieval top-1 against
   chance, and the wall time of each step.
A piece of the bundle that is not built yet gives a one-line message and exit code 0 after the steps that worked;
a step that fails gives its exit code.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = "['configs/pretrain.yaml','configs/demo_pretrain.yaml']"
RUN_DIR = os.path.join(ROOT, "runs", "pretrain_demo")
CKPT_DIR = os.path.join(ROOT, "models")
# modules demo pretraining imports; a missing one means that part of the bundle is not built yet
REQUIRED_MODULES = (
    "bundle.data.manifest",
    "bundle.data.tokenization",
    "bundle.data.image_io",
    "bundle.networks.cmcgns",
    "bundle.engines.trainer",
)


def environment() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def missing_modules() -> list[str]:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    missing = []
    for name in REQUIRED_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


def build_demo_data(out_dir: str) -> bool:
    manifest = os.path.join(out_dir, "manifests", "pretrain.json")
    if os.path.isfile(manifest):
        print(f"[demo] demo data found: {manifest}")
        return True
    generator = os.path.join(ROOT, "scripts", "make_demo_data.py")
    if not os.path.isfile(generator):
        print("[demo] scripts/make_demo_data.py is not in this checkout yet: cannot build the demo data; stopping.")
        return False
    print(f"[demo] generating the demo data into {out_dir} ...", flush=True)
    # The contact sheet quotes IU report text: written locally (git-ignored), never committed.
    sheet = os.path.join(ROOT, "docs", "results", "demo_contact_sheet.png")
    result = subprocess.run(
        [sys.executable, generator, "--out", out_dir, "--contact-sheet", sheet], cwd=ROOT, env=environment()
    )
    if result.returncode != 0:
        raise SystemExit(f"[demo] demo data generation failed with exit code {result.returncode} (see above)")
    if not os.path.isfile(manifest):
        raise SystemExit(f"[demo] the demo data generator finished but wrote no {manifest}")
    return True


def run_bundle(cmd: list[str], debug: bool = False, log_path: str | None = None) -> tuple[int, str | None]:
    """Run a bundle command; unless `debug`, tracebacks are folded to their exception line, the full output goes to
    `log_path`, and the bundle's own error message (ManifestError, PreflightError, ...) is returned to be printed
    last. Returns (exit code, that message or None)."""
    if debug:
        return subprocess.run(cmd, cwd=ROOT, env=environment()).returncode, None
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from bundle.engines.error_report import TracebackFilter, bundle_error

    shown = TracebackFilter()
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    for line in process.stdout:
        for text in shown.feed(line):
            print(text, flush=True)
    code, message = process.wait(), None
    if code != 0:
        if log_path:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            with open(log_path, "w", encoding="utf-8") as f:
                f.write("\n".join(shown.lines) + "\n")
        message = bundle_error(shown.lines)
        where = f"full traceback in {log_path}; " if log_path else ""
        print(f"[demo] ({where}rerun with --debug to see it live)", flush=True)
    return code, message


def pretrain(out_dir: str, extra: list[str], debug: bool = False) -> None:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        CONFIGS,
        "--meta_file",
        "metadata.json",
        "--logging_file",
        "configs/logging.conf",
        "--dataset_dir",
        os.path.abspath(out_dir),
        *extra,
    ]
    print("[demo] " + " ".join(cmd[1:4]) + f' --config_file "{CONFIGS}" ...', flush=True)
    code, message = run_bundle(cmd, debug, os.path.join(override_value(extra, "output_dir", RUN_DIR), "error.log"))
    if code != 0:
        # the bundle's own message is the last line the user reads
        raise SystemExit(f"[demo] pretraining failed with exit code {code}" + (f": {message}" if message else ""))


def override_value(extra: list[str], name: str, default: str) -> str:
    """The value of a `--name value` / `--name=value` bundle override among the extra arguments, else default."""
    for i, arg in enumerate(extra):
        if arg == f"--{name}" and i + 1 < len(extra):
            return os.path.join(ROOT, extra[i + 1])
        if arg.startswith(f"--{name}="):
            return os.path.join(ROOT, arg.split("=", 1)[1])
    return default


def final_retrieval(history: str) -> str:
    from bundle.engines.progress import read_history

    _, val = read_history(history)
    if not val:
        return "no validation record"
    last = val[-1]
    parts = [f"{k[4:]} {last[k]:.3f}" for k in ("val_i2t_top1", "val_t2i_top1") if last.get(k) is not None]
    chance = last.get("val_chance_top1")
    return (
        ", ".join(parts)
        + (f" (chance {chance:.3f}" if chance is not None else "")
        + f", epoch {last['epoch']}, in-batch retrieval)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data", help="demo dataset directory (created if missing)")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the bundle's output unfiltered (full tracebacks) instead of the short error",
    )
    args, extra = parser.parse_known_args(argv)
    out_dir = os.path.abspath(args.out)
    times = {}
    start = time.time()
    if not build_demo_data(out_dir):
        return 0
    times["data"] = time.time() - start
    missing = missing_modules()
    if missing:
        print(f"[demo] not built yet: {', '.join(missing)}; demo pretraining skipped.")
        return 0
    t = time.time()
    pretrain(out_dir, extra, args.debug)
    times["pretraining"] = time.time() - t

    from bundle.engines.plotting import plot_pretrain_curves

    run_dir = override_value(extra, "output_dir", RUN_DIR)
    ckpt_dir = override_value(extra, "ckpt_dir", CKPT_DIR)
    history = os.path.join(run_dir, "history.jsonl")
    png = os.path.join(run_dir, "loss_curves.png")
    if os.path.isfile(history):
        plot_pretrain_curves(history, png, title="CM-CGNS demo pretraining")
    else:
        png = None
        print(f"[demo] no {history}: no loss curves to plot")
    times["total"] = time.time() - start
    print("[demo] done in {total:.0f} s (data {data:.0f} s, pretraining {pretraining:.0f} s)".format(**times))
    for label, path in (
        ("exported image encoder", os.path.join(ckpt_dir, "image_encoder.pt")),
        ("exported pretraining model", os.path.join(ckpt_dir, "model.pt")),
        ("resumable checkpoint", os.path.join(ckpt_dir, "last.pt")),
        ("TensorBoard logs", run_dir),
        ("loss curves", png),
    ):
        if path and os.path.exists(path):
            shown = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
            print(f"[demo] {label}: {shown}")
    if os.path.isfile(history):
        print(f"[demo] final validation retrieval top-1: {final_retrieval(history)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
