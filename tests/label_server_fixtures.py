"""Tiny exported task bundles and a real MONAI Label server (the side environment of `make label-env`) for
tests/test_monai_label_server.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LABEL_VENV = ROOT / ".venv-label"
LABEL_PY = LABEL_VENV / "bin" / "python"
SHIM = LABEL_VENV / "torchvision-shim"


def write_studies(folder: Path, n: int = 3) -> list[str]:
    """n small PNG radiographs (not square) with segmentation labels in MONAI Label's labels/final/."""
    rng = np.random.default_rng(1)
    (folder / "labels" / "final").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        image = rng.integers(0, 60, (52, 60)).astype(np.uint8)
        mask = np.zeros_like(image)
        r, c = 8 + 4 * i, 10 + 3 * i
        image[r : r + 14, c : c + 18] = 210
        mask[r : r + 14, c : c + 18] = 1
        Image.fromarray(image).save(folder / f"cxr_{i}.png")
        Image.fromarray(mask).save(folder / "labels" / "final" / f"cxr_{i}.png")
        ids.append(f"cxr_{i}")
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(SHIM),  # the torchvision.utils stub of `make label-env`; the bundles bring their own code
        PATH=f"{LABEL_VENV / 'bin'}:{env.get('PATH', '')}",
        MONAILABEL_PYEXE=str(LABEL_PY),
        MONAI_ZOO_SOURCE="github",
        MONAI_LABEL_AUTO_UPDATE_SCORING="false",
        MONAI_LABEL_TRACKING_ENABLED="false",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


@contextlib.contextmanager
def running_server(app: Path, studies: Path, models: list[str], log: Path, timeout: float = 300.0):
    """`monailabel start_server` on a free local port; yields its URL; stopped (SIGTERM, then SIGKILL) always."""
    port = free_port()
    cmd = [str(LABEL_PY), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--conf", "models", ",".join(models), "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env(), cwd=str(app), start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"MONAI Label server not up after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the training subprocesses it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def post(url: str, fields: dict | None = None, body: dict | None = None, timeout: float = 600.0) -> bytes:
    """POST multipart form fields (inference) or a JSON body (training); returns the reply's bytes."""
    if body is not None:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    else:
        boundary = "cmcgnsboundary"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
        ]
        data = ("".join(parts) + f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.read()
