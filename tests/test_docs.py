"""The README is an entry point and every link of the README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")



def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # links inside code are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    broken = []
    for page in documents():
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_an_entry_point():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README is an entry point: move reference text to docs/"
    for needed in ("## Set-up: two commands", "## The tour", "## Benchmarks at a glance", "docs/exactness.md"):
        assert needed in readme
    # every area's page is linked from the README
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"


def test_the_set_up_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert '.venv/bin/pip install "torch==2.13.0" -e ".[train,test]" && .venv/bin/python -m pytest' in readme
    assert 'pip install -q "torch==2.13.0" -e ".[train,test]"' in ci and "-m pytest" in ci
    readme_args = readme.split(".venv/bin/python -m pytest", 1)[1].splitlines()[0].split()
    ci_args = ci.split('"$venv/bin/python" -m pytest', 1)[1].splitlines()[0].split()
    assert [a for a in ci_args if a not in ("-p", "no:cacheprovider")] == readme_args  # the same worker count
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/retrieve demo" in readme


def test_every_command_help_names_its_reference_page(capsys):
    from retrieval.cli import app, run
    from retrieval.cli.reference import COMMAND_PAGES, EXTRA_PAGES

    names = [info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands]
    missing = sorted(set(names) - set(COMMAND_PAGES))
    assert not missing, f"commands without a reference page in retrieval/cli/reference.py: {missing}"
    for page in {*COMMAND_PAGES.values(), *(p for pages in EXTRA_PAGES.values() for p in pages)}:
        assert (ROOT / "docs" / page).is_file(), page
    for name in names:
        assert run([name, "--help"]) == 0
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"Reference: docs/{COMMAND_PAGES[name]}" in help_text, name
