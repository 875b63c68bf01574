"""The README states what the code does: its presets table is the code's table."""
from pathlib import Path

from lmexport.tolerances import TOLERANCES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _fmt(value):
    return "-" if value is None else f"{value:g}"


def test_readme_tolerance_table_matches_the_code():
    for name, t in TOLERANCES.items():
        row = (f"| {name} | {_fmt(t.max_abs)} | {_fmt(t.min_top1)} | {_fmt(t.max_kl)} | "
               f"{_fmt(t.min_cosine)} | {t.hidden_rel:g} |")
        assert row in README, row


def test_readme_names_the_two_fresh_machine_commands_that_exist():
    root = Path(__file__).resolve().parents[1]
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):
        assert command in README
        assert (root / command.split()[1]).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()
