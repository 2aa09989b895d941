"""Parse an exported bundle's configs in this process as MONAI Label does: its folder first on sys.path and no other
`scripts` package loaded (the repository's own scripts/ folder would otherwise shadow the bundle's scripts/)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def _unload_scripts() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


@contextlib.contextmanager
def exported_bundle_on_path(bundle_dir: str | Path):
    path = str(Path(bundle_dir).resolve())
    _unload_scripts()
    sys.path.insert(0, path)
    try:
        yield path
    finally:
        sys.path.remove(path)
        _unload_scripts()
