"""The README states what the code does: its presets table is the code's table, row for row."""
import re
from pathlib import Path

from lmexport.compare.tolerances import TOLERANCES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _fmt(value):
    return "-" if value is None else f"{value:g}"


def test_readme_tolerance_table_matches_the_code():
    for name, t in TOLERANCES.items():
        row = (f"| {name} | {t.atol:g} | {_fmt(t.rtol)} | {_fmt(t.state_rtol)} | {_fmt(t.min_top1)} | "
               f"{_fmt(t.max_kl)} | {_fmt(t.min_cosine)} | {t.hidden_rel:g} |")
        assert row in README, row


def test_readme_names_the_two_fresh_machine_commands_that_exist():
    root = Path(__file__).resolve().parents[1]
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):
        assert command in README
        assert (root / command.split()[1]).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()


def test_the_specification_is_in_the_repository_and_equals_the_shared_copy():
    root = Path(__file__).resolve().parents[1]
    spec = root / "docs" / "ARCHITECTURE.md"
    assert spec.is_file()
    shared = root.parent / "shared" / "ARCHITECTURE.md"
    if shared.is_file():          # the steering copy beside a checkout, where there is one
        assert spec.read_text(encoding="utf-8") == shared.read_text(encoding="utf-8")


def test_every_relative_link_in_the_docs_resolves_inside_the_repository():
    root = Path(__file__).resolve().parents[1]
    broken = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "benchmarks").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.exists() or root not in resolved.parents:
                broken.append(f"{doc.name}: {target}")
    assert not broken, broken
