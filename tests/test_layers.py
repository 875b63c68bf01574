"""The package's layers (docs/DESIGN.md, "Layers"), checked on the source: no module imports a higher
layer, and nothing in the torch-free layers imports torch or transformers, not even inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmexport"

# lowest first; a module belongs to the first entry whose prefix names it (docs/DESIGN.md states the same table)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("lmexport", "lmexport.errors", "lmexport.jsonio", "lmexport.atomic", "lmexport.interrupts", "lmexport.safe_paths",
              "lmexport.config", "lmexport.formats", "lmexport.tensor_names", "lmexport.manifest_schema",
              "lmexport.manifest")),
    ("core", ("lmexport.engine", "lmexport.compare", "lmexport.runtime")),
    ("modeling", ("lmexport.modeling",)),
    ("exporters", ("lmexport.exporters", "lmexport.optimum")),
    ("tools", ("lmexport.parity", "lmexport.perplexity", "lmexport.bench")),
    ("cli", ("lmexport.commands", "lmexport.cli")),
]
TORCH_FREE = ("base", "core")
HEAVY = ("torch", "transformers", "safetensors", "onnxscript", "accelerate")


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/DESIGN.md")
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            # `from lmexport.x import y` may name a submodule y
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                    if (PACKAGE.parent / (base + "." + alias.name).replace(".", "/")).with_suffix(".py").exists()]
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_up_a_floor(path):
    me = module_name(path)
    mine = layer_of(me)
    upward = [f"line {line}: {name} ({LAYERS[layer_of(name)][0]})" for line, name in imports(path)
              if name.startswith("lmexport") and layer_of(name) > mine]
    assert not upward, f"{me} ({LAYERS[mine][0]}) imports a higher layer: " + "; ".join(upward)


@pytest.mark.parametrize("path", [p for p in MODULES if LAYERS[layer_of(module_name(p))][0] in TORCH_FREE],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_free_layers_never_import_torch(path):
    heavy = [f"line {line}: {name}" for line, name in imports(path) if name.split(".")[0] in HEAVY]
    assert not heavy, f"{path.relative_to(ROOT)} is in a torch-free layer but imports " + "; ".join(heavy)


def test_the_layer_table_is_the_one_in_design_md():
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    for name, prefixes in LAYERS:
        assert f"**{name}**" in design, name
        for prefix in prefixes[1:] if name == "base" else prefixes:
            assert "`" + prefix.removeprefix("lmexport.").replace(".", "/") in design, (name, prefix)
