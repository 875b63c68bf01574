"""The maps of the code stay true: every file and folder that README's development tree and
docs/DESIGN.md name exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = re.compile(r"^[\w./-]+\.(?:py|md|sh|mjs|jinja)$|^[\w./-]+/$")


def readme_tree() -> list[tuple[Path, list[str]]]:
    """(folder of an entry, names in its description) for each line of the tree."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Development", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    entries, parent, current = [], ROOT, None
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        words = line.split()
        if not words:
            continue
        if indent in (0, 2) and FILE.match(words[0]):
            base = ROOT if indent == 0 else ROOT / "lmexport"
            current = base / words[0]
            if indent == 0 and words[0] == "lmexport/":
                parent = current
            entries.append((current, words[1:]))
        elif current is not None:            # a continuation line of the last entry's description
            entries[-1][1].extend(words)
    assert parent == ROOT / "lmexport" and len(entries) > 20, "README's development tree was not found"
    return entries


def test_readme_development_tree_names_files_that_exist():
    missing = []
    for path, description in readme_tree():
        if not path.exists():
            missing.append(str(path.relative_to(ROOT)))
            continue
        folder = path if path.is_dir() else path.parent
        for word in description:
            name = word.strip("(),;:")
            if re.fullmatch(r"[\w-]+(?:/[\w-]+)*\.(?:py|md|sh)|[\w-]+/", name):
                if not any(folder.rglob(name.rstrip("/"))) and not (ROOT / name).exists():
                    missing.append(f"{name} (under {folder.relative_to(ROOT)})")
    assert not missing, "README's development tree names what does not exist: " + ", ".join(missing)


def test_readme_development_tree_lists_every_package_module_and_folder():
    listed = {p.relative_to(ROOT / "lmexport").as_posix().rstrip("/") for p, _ in readme_tree()
              if ROOT / "lmexport" in p.parents}
    listed |= {n.split("/")[0] for n in listed}
    here = {p.name for p in (ROOT / "lmexport").iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert here <= listed, f"not in README's development tree: {sorted(here - listed)}"


def test_design_md_names_files_that_exist():
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    missing = []
    for name in re.findall(r"`([^`\s]+)`", design):
        if not re.fullmatch(r"[\w./-]+\.(?:py|md)|[\w-]+(?:/[\w-]+)*/", name):
            continue
        if not ((ROOT / name).exists() or (ROOT / "lmexport" / name).exists()):
            missing.append(name)
    assert not missing, "docs/DESIGN.md names what does not exist: " + ", ".join(missing)
    assert "runtime/llamacpp/engine.py" in design and "register(" in design
