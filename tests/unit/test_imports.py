"""Imports point down only: the layer table of docs/architecture.md, checked against every
import statement of every module of the package (parsed, not executed, so imports inside
functions count as much as those at the top)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "vrift"
DOC = REPO / "docs" / "architecture.md"


def doc_layers() -> list[list[str]]:
    """The entries (paths relative to the repository) of each line of the layer table, highest first."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Layers and the direction of imports", 1)[1]
    block = section.split("```", 2)[1]
    layers = []
    for line in block.strip("\n").splitlines():
        paths = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        layers.append([p.strip() for p in paths.split(",")])
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def entry_name(entry: str) -> str:
    """`vrift/vdir/` -> `vrift.vdir`, `vrift/cli.py` -> `vrift.cli`, `vrift/__init__.py` -> `vrift`."""
    name = entry.rstrip("/").removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def layer_of(module: str, entries: dict[str, int]) -> int | None:
    """The layer of the most specific entry covering `module` (a package entry covers its
    submodules; the bare package entry `vrift` covers only vrift/__init__.py)."""
    best, depth = None, -1
    for name, layer in entries.items():
        covers = module == name or (name != "vrift" and module.startswith(name + "."))
        if covers and name.count(".") > depth:
            best, depth = layer, name.count(".")
    return best


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a vrift module in `path`; `from . import x`
    names the submodule x when there is one."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vrift"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "vrift":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (REPO / Path(*sub.split(".")).with_suffix(".py")).is_file() or \
                    (REPO / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else target))
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layer_table_names_only_what_exists():
    for layer in doc_layers():
        for entry in layer:
            assert (REPO / entry).exists(), f"docs/architecture.md names {entry}, which does not exist"


def test_every_module_has_a_layer():
    entries = {entry_name(e): i for i, layer in enumerate(doc_layers()) for e in layer}
    missing = [module_name(p) for p in modules() if layer_of(module_name(p), entries) is None]
    assert not missing, f"modules without a line in the layer table of docs/architecture.md: {missing}"


def test_no_module_imports_a_higher_layer():
    layers = doc_layers()
    entries = {entry_name(e): i for i, layer in enumerate(layers) for e in layer}
    upward = []
    for path in modules():
        here = layer_of(module_name(path), entries)
        for line, target in imports_of(path):
            there = layer_of(target, entries)
            assert there is not None, f"{path.relative_to(REPO)}:{line}: imports {target}, which has no layer"
            if there < here:  # a smaller index is a higher line of the table
                upward.append(f"{path.relative_to(REPO)}:{line}: imports {target} ({', '.join(layers[there])})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_the_index_and_the_blob_store_know_nothing_of_each_other():
    for a, b in (("vdir", "cas"), ("cas", "vdir")):
        for path in (PACKAGE / a).rglob("*.py"):
            bad = [t for _, t in imports_of(path) if t == f"vrift.{b}" or t.startswith(f"vrift.{b}.")]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_resolver_maps_modules_to_their_layers():
    """A more specific entry wins over its folder; relative imports resolve to the module."""
    entries = {entry_name(e): i for i, layer in enumerate(doc_layers()) for e in layer}
    assert layer_of("vrift.vdir.layout", entries) > layer_of("vrift.vdir.index", entries)
    assert layer_of("vrift.daemon.server", entries) < layer_of("vrift.cache.store", entries)
    assert ("vrift.cas.store" in {t for _, t in imports_of(PACKAGE / "cache" / "key.py")})
