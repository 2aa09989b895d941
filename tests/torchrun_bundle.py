"""Run `python -m monai.bundle run` under torchrun as N CPU processes (gloo), the documented multi-GPU command.
Shared by the tests/test_*_multiprocess.py files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun_bundle(config_files: list, processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """The bundle run with `config_files` (paths, later ones override) on `processes` CPU processes; fails the test
    with the tail of the output when any process fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={processes}",
        "-m", "monai.bundle", "run",
        "--config_file", json.dumps([str(f) for f in config_files]),
        "--meta_file", str(ROOT / "metadata.json"),
        "--logging_file", str(ROOT / "configs" / "logging.conf"),
    ]  # fmt: skip
    # on a timeout (ranks waiting in different collectives hang, they do not fail) torchrun gets SIGTERM, which it
    # passes on to its workers (they run in sessions of their own, out of reach of a group kill); torchrun's own
    # process group is killed if it has not stopped a minute later
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = "", "(no output: torchrun did not stop on SIGTERM)"
        raise AssertionError(f"no result after {timeout} s (a hang?):\n" + stdout[-3000:] + stderr[-3000:]) from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
