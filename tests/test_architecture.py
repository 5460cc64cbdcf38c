"""Data flows one way, file → pixels → model → guard → file: the folders of `watermark_cli` import
each other only downhill, and a function-level import of wm's own code is there only to keep
`wm --help` instant (it names a module that pulls torch or another heavy library).

Checked in the source (every `import`, at module level or inside a function), so a lazy import
cannot hide a cycle."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import watermark_cli

PACKAGE = Path(watermark_cli.__file__).parent

# What each folder may import besides itself. `core` is the package's top-level modules
# (errors, keys, hashing, views, quality, allocation, guard, payload, polar, jsonout).
ALLOWED = {
    "core": set(),
    "constrained": set(),  # reusable for any per-sample constraint: nothing else of wm
    "integrity": {"core"},  # codecs of records, envelopes and signatures: bytes and datasets, no files
    "io": {"core", "integrity"},
    "attacks": {"core"},
    "model": {"core", "io"},
    "data": {"core", "io"},
    "marking": {"core", "integrity", "io", "model"},
    "diagnostic": {"core", "io", "model"},
    "training": {"core", "constrained", "attacks", "io", "model"},
    "evaluation": {"core", "attacks", "diagnostic", "io", "marking", "model"},
    "serve": {"core", "io", "marking", "model"},
    "cli": {"core", "constrained", "integrity", "io", "attacks", "model", "data", "marking", "diagnostic",
            "training", "evaluation", "serve"},
}
# Libraries whose import `wm --help` must not pay for.
HEAVY = ("torch", "torchvision", "matplotlib", "distributed", "dask", "pynetdicom", "onnxruntime", "numba")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "__main__":
        return "cli"  # `python -m watermark_cli` is the command line's entry point
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "core"


@cache
def sources() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported wm module, imported inside a function, line) for every import in `module`."""
    path = sources()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources() else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "watermark_cli":
                found.append((target, id(node) in in_function, node.lineno))
    return found


@cache
def heavy_at_import(module: str) -> bool:
    """True when importing `module` imports a HEAVY library (itself or through wm modules)."""
    tree = ast.parse(sources()[module].read_text())
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(name.split(".")[0] in HEAVY for name in names):
            return True
    return any(heavy_at_import(target) for target, lazy, _ in imports(module) if not lazy and target != module)


def test_the_allowed_imports_form_no_cycle():
    order: list[str] = []
    remaining = dict(ALLOWED)
    while remaining:
        ready = [name for name, needs in remaining.items() if needs <= set(order)]
        assert ready, f"the allowed imports have a cycle among {sorted(remaining)}"
        order += sorted(ready)
        for name in ready:
            del remaining[name]
    assert set(ALLOWED) == {folder_of(m) for m in sources()}, "a folder is missing from ALLOWED"


def test_every_folder_imports_only_what_it_may():
    wrong = [f"{sources()[module].relative_to(PACKAGE.parent)}:{line} ({folder_of(module)}) imports {target} "
             f"({folder_of(target)})"
             for module in sources() for target, _, line in imports(module)
             if folder_of(target) != folder_of(module) and folder_of(target) not in ALLOWED[folder_of(module)]]
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_of_wm_only_keep_heavy_libraries_out_of_start_up():
    """Outside the command line (whose modules import lazily so that `wm --help` stays instant),
    wm's own modules are imported at module level, where a reader sees the graph; inside a
    function only when the imported module pulls a heavy library."""
    hidden = [f"{sources()[module].relative_to(PACKAGE.parent)}:{line} imports {target} inside a function"
              for module in sources() if folder_of(module) != "cli"
              for target, lazy, line in imports(module)
              if lazy and target in sources() and not heavy_at_import(target)]
    assert not hidden, "\n".join(hidden)
