"""The bundle's own contracts: metadata copies, offline metadata verification, install rules, CI entry point."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "configs" / "schema" / "metadata_schema.json"


def _metadata() -> dict:
    return json.loads((ROOT / "metadata.json").read_text())


def test_metadata_copy_is_byte_identical():
    # MONAI Label and the model-zoo tools read configs/metadata.json; the root file is the source of truth.
    assert (ROOT / "configs" / "metadata.json").read_bytes() == (ROOT / "metadata.json").read_bytes()


def test_changelog_has_current_version_first():
    meta = _metadata()
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"], "the newest changelog entry must be the current version"
    as_tuples = [tuple(int(p) for p in v.split(".")) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True), "changelog must list versions newest first"


def test_metadata_versions_match_installed_environment():
    meta = _metadata()
    assert meta["monai_version"] == md.version("monai")
    assert meta["pytorch_version"] == md.version("torch").split("+")[0]
    assert meta["numpy_version"] == md.version("numpy")
    for name, version in meta["required_packages_version"].items():
        assert md.version(name) == version, f"metadata.json says {name}=={version}"


def test_required_packages_install_without_torchvision():
    """What MONAI installs from required_packages_version (`monai.bundle download` / MONAI Label) must not pull
    torchvision: data-only packages such as torchxrayvision (it ships the demo's reports) stay out of it."""
    import re

    for name in _metadata()["required_packages_version"]:
        needs = [
            re.split(r"[ ;<>=!\[(]", r, maxsplit=1)[0].lower() for r in md.requires(name) or [] if "extra ==" not in r
        ]
        assert "torchvision" not in needs, f"{name} requires torchvision"


def _verify(meta_file: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_metadata",
        "--meta_file",
        str(meta_file),
        "--filepath",
        str(SCHEMA),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_verify_metadata_passes_offline():
    result = _verify(ROOT / "metadata.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_verify_metadata_rejects_broken_metadata(tmp_path):
    meta = _metadata()
    del meta["network_data_format"]["outputs"]
    meta["version"] = "one"
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    result = _verify(broken)
    assert result.returncode != 0


def test_requirements_are_pinned_and_torch_is_2_13_without_torchvision():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs[0] == "torch==2.13.0"
    for req in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][A-Za-z0-9.+]*", req), f"unpinned: {req}"
        assert not req.lower().startswith("torchvision")
    makefile = (ROOT / "Makefile").read_text()
    # torch goes in first, on its own, before the requirement file can ask for anything.
    assert makefile.index("pip install --quiet torch==2.13.0") < makefile.index("-r requirements.txt")


def test_installed_environment_obeys_install_rules():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_environment
    finally:
        sys.path.pop(0)
    assert check_environment.problems() == []
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", readme, flags=re.M)
    assert commands[:2] == ["make demo", "make test"], "README must open with the two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_logging_conf_is_accepted_by_monai(tmp_path):
    import logging.config

    from monai.bundle.workflows import (
        _reject_executable_logging_config,
    )  # private, but it is the exact check `run` applies

    path = ROOT / "configs" / "logging.conf"
    _reject_executable_logging_config(str(path))
    logging.config.fileConfig(path, disable_existing_loggers=False)
