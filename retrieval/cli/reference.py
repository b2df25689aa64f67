"""Where each command's reference lives: the docs page named at the end of its --help."""

from __future__ import annotations

import typer

REPOSITORY_DOCS = "docs/"  # pages of the retrieve repository (README.md links them all)

# command -> its reference page under docs/ (one place: the README's documentation table agrees)
COMMAND_PAGES: dict[str, str] = {
    "import": "data.md",
    "layout": "data.md",
    "synth": "data.md",
    "info": "data.md",
    "evaluate": "evaluation.md",
    "verify": "verification.md",
    "build-index": "indexes.md",
    "search": "indexes.md",
    "index-info": "indexes.md",
    "tune": "indexes.md",
    "runs": "catalogue.md",
    "sql": "catalogue.md",
    "compare": "catalogue.md",
    "report": "catalogue.md",
    "train": "training.md",
    "embed": "training.md",
    "demo": "catalogue.md",
    "add-to-index": "indexes.md",
    "remove-from-index": "indexes.md",
    "show": "everyday.md",
    "tag": "catalogue.md",
    "rm": "catalogue.md",
    "restore": "catalogue.md",
    "export": "everyday.md",
    "identify": "identification.md",
    "cluster": "clustering.md",
}

EXTRA_PAGES: dict[str, tuple[str, ...]] = {"evaluate": ("reranking.md", "everyday.md", "exactness.md")}


def epilog(command: str) -> str:
    pages = (COMMAND_PAGES[command], *EXTRA_PAGES.get(command, ()))
    return "Reference: " + ", ".join(REPOSITORY_DOCS + page for page in pages) + " (in the retrieve repository)."


def add_reference_epilogs(app: typer.Typer) -> None:
    """Give every registered command without an epilog the pointer to its reference page."""
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if info.epilog is None:
            info.epilog = epilog(name)
