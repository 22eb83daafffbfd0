"""The README and the notes in ``docs/`` stay true to the tree: the README opens with the two
commands, relative links resolve, and every test, test function, benchmark script and source
module they name as proof exists (a renamed test would otherwise leave a claim without its proof)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_FILES = sorted((ROOT / "tests").rglob("test_*.py"))


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _test_sources() -> dict[str, list[Path]]:
    by_name: dict[str, list[Path]] = {}
    for p in TEST_FILES:
        by_name.setdefault(p.name, []).append(p)
    return by_name


def test_the_readme_opens_with_exactly_the_two_commands() -> None:
    text = _text(ROOT / "README.md")
    block = re.search(r"```\n(.*?)```", text, re.S)
    assert block is not None and text.index("```") < text.index("\n## ")
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(doc)) if "://" not in m]
    missing = [m for m in links if not (doc.parent / m).exists()]
    assert not missing, f"{doc.name}: links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_tests_scripts_and_modules_exist(doc: Path) -> None:
    text = _text(doc)
    by_name = _test_sources()
    missing: list[str] = []
    for name in set(re.findall(r"(test_\w+\.py)", text)):
        if name not in by_name:
            missing.append(name)
    for path in set(re.findall(r"`((?:bench|tests|src/quicmesh)/[\w/.]+\.py)", text)):
        if not (ROOT / path).exists():
            missing.append(path)
    for path in set(re.findall(r"`((?:core|runtime|bounded|store|observability|testing)/\w+\.py)`", text)):
        if not (ROOT / "src" / "quicmesh" / path).exists():
            missing.append(path)
    everything = "\n".join(p.read_text(encoding="utf-8") for p in TEST_FILES)
    for pattern in set(re.findall(r"(test_\w+)\*", text)):  # a glob: some file matches it
        if not any(name.startswith(pattern) for name in by_name):
            missing.append(pattern + "*")
    for func in set(re.findall(r"\b(test_\w+)\b(?![.*\w])", text)):
        if not re.search(rf"\bdef {func}\(", everything):
            missing.append(func)
    for file, func in set(re.findall(r"(test_\w+\.py)`?\s*`?::`?(test_\w+)", text)):
        sources = "\n".join(p.read_text(encoding="utf-8") for p in by_name.get(file, []))
        if not re.search(rf"\bdef {func}\(", sources):
            missing.append(f"{file}::{func}")
    assert not missing, f"{doc.name} names what the tree does not have: {sorted(missing)}"
