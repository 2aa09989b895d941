"""Copy the bundle code an exported bundle's configs use into its own `scripts/` package.

Why `scripts`: MONAI Label puts a bundle's folder on sys.path and unloads the module named `scripts` before it
parses that bundle's configs, so each bundle served by one server gets its own copy of the code (model-zoo layout).
The copy is the transitive closure of the `bundle.*` modules named in the configs (followed through each module's
imports), with every `bundle.` module reference rewritten to `scripts.`; no other file of the repository travels.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "bundle"
TARGET = "scripts"
# `bundle.x.y` where it is a module path (not `bundle_root`, not `@bundle_root + ...`); the same for `scripts.x.y`
_REFERENCE = re.compile(rf"(?<![\w@.]){PACKAGE}((?:\.\w+)+)")
_EXPORTED = re.compile(rf"(?<![\w@.]){TARGET}((?:\.\w+)+)")


def rewrite(text: str) -> str:
    """`bundle.a.b` -> `scripts.a.b` in config strings and source code."""
    return _REFERENCE.sub(lambda m: TARGET + m.group(1), text)


def _module_file(module: str) -> Path | None:
    """The source file of a dotted `bundle...` module, or None when `module` names a class / function in one."""
    parts = module.split(".")
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(reference: str) -> str | None:
    """The longest prefix of a dotted reference that is a module of the package (`bundle.a.b.Cls` -> `bundle.a.b`)."""
    parts = reference.split(".")
    for end in range(len(parts), 1, -1):
        if _module_file(".".join(parts[:end])) is not None:
            return ".".join(parts[:end])
    return None


def _imports(path: Path) -> set[str]:
    """`bundle.*` modules imported anywhere in a source file (also inside functions: lazy imports run too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                module = _resolve(name)
                if module:
                    found.add(module)
    return found


def referenced_modules(texts: Iterable[str]) -> set[str]:
    """`bundle.*` modules whose exported names (`scripts.*`) the configs use (`_target_`, `$from ... import`),
    closed under their own imports."""
    todo = set()
    for text in texts:
        for match in _EXPORTED.finditer(text):
            module = _resolve(PACKAGE + match.group(1))
            if module:
                todo.add(module)
    done: set[str] = set()
    while todo:
        module = todo.pop()
        done.add(module)
        todo |= _imports(_module_file(module)) - done
    return done


def copy_code(config_texts: Iterable[str], out_dir: str | Path) -> list[str]:
    """Write the modules the exported configs need under out_dir/scripts (with the package __init__ files);
    returns their exported names."""
    out = Path(out_dir) / TARGET
    modules = referenced_modules(config_texts)
    packages = {".".join(m.split(".")[:k]) for m in modules for k in range(1, len(m.split(".")))}
    for name in sorted(modules | packages):
        source = _module_file(name)
        relative = source.relative_to(ROOT / PACKAGE)
        dest = out / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text() if name in modules or source.name == "__init__.py" else ""
        dest.write_text(rewrite(text))
    return sorted(rewrite(m) for m in modules)
