"""docs/design.md stays the document the code cites: every `docs/design.md §N` names one of its
sections, the README links it, and the files and folders it names exist."""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
SKIP_DIRS = {".git", ".venv", "build", "install", "log", "runs", "__pycache__", ".pytest_cache"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".cfg", ".yaml", ".yml", ".xml", ".txt", ".toml", ""}
# "docs/design.md §7, §9" cites sections 7 and 9; the old form "DESIGN §N" used the same numbering.
CITATION = re.compile(r"(?:docs/design\.md|DESIGN) (§\d+(?:(?:,| and) §\d+)*)")
SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)
CHECKED_PATH = re.compile(r"`([\w-][\w./-]*/(?:[\w./-]*\.(?:py|xml|yaml|json|sh|md))?)`")


def _text_files():
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            path = Path(folder, name)
            if path.suffix in TEXT_SUFFIXES and path != DESIGN:
                try:
                    yield path, path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue


def _sections() -> set[int]:
    return {int(n) for n in SECTION.findall(DESIGN.read_text(encoding="utf-8"))}


def test_design_sections_are_numbered_one_to_ten():
    assert _sections() == set(range(1, 11))


def test_every_design_citation_names_an_existing_section():
    sections = _sections()
    cited, bad = 0, []
    for path, text in _text_files():
        for match in CITATION.finditer(text):
            for number in re.findall(r"§(\d+)", match.group(1)):
                cited += 1
                if int(number) not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    bad.append(f"{path.relative_to(REPO)}:{line}: §{number}")
    assert cited >= 20, f"only {cited} citations found: is the scan looking at the right files?"
    assert not bad, f"cited sections missing from docs/design.md: {bad}"


def test_readme_links_the_design_document():
    assert "](docs/design.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_paths_named_in_the_design_document_exist():
    """Backticked repository paths (folders ending in '/', files with a known suffix), relative to the
    repository or to the package folder."""
    named = CHECKED_PATH.findall(DESIGN.read_text(encoding="utf-8"))
    assert len(named) > 20
    missing = [p for p in named if not ((REPO / p).exists() or (REPO / "prune_perception" / p).exists())]
    assert not missing, f"docs/design.md names paths that do not exist: {missing}"


def test_relative_links_of_the_design_document_resolve():
    links = re.findall(r"\]\(([^)#:]+)\)", DESIGN.read_text(encoding="utf-8"))
    assert links
    assert [link for link in links if not (DESIGN.parent / link).exists()] == []
