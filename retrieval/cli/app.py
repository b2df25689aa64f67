"""The `retrieve` Typer application, its global options and the error-to-exit-code policy.

Exit codes: 0 success, 1 failure (including bad input files), 2 usage error (including an option
value a job refuses, ``retrieval.errors.OptionError``).
A user mistake (any of ``retrieval.errors.USER_ERRORS``) prints one line on stderr;
``--debug`` (or ``RETRIEVE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys

import typer

from retrieval import __version__
from retrieval.errors import USER_ERRORS, OptionError

app = typer.Typer(
    name="retrieve",
    help="Retrieval and evaluation engine for metric-learning embeddings (re-ID, faces, products).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = {"on": bool(os.environ.get("RETRIEVE_DEBUG"))}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"retrieve {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback instead of the one-line error."),
) -> None:
    """retrieve: index, rank and evaluate embeddings under the field's protocols."""
    if debug:
        _debug["on"] = True


def error_line(exc: BaseException) -> str:
    """The one-line message shown for a user mistake."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.filename:
        reason = {
            FileNotFoundError: "no such file or folder",
            IsADirectoryError: "is a folder, expected a file",
            PermissionError: "permission denied",
        }[type(exc)]
        return f"{exc.filename}: {reason}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines())


@functools.cache
def command():
    """The click command behind ``app``, its help texts polished (``retrieval.cli.help_text``).

    Built once per process: typer builds every subcommand from its signature (about 0.1 s), and
    the tests (and scripts) call ``run`` many times in one process."""
    from retrieval.cli.help_text import polish

    return polish(typer.main.get_command(app))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (used by ``main`` and by the tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _debug["on"] = bool(os.environ.get("RETRIEVE_DEBUG")) or "--debug" in argv
    try:
        # standalone mode: usage errors print themselves and exit 2, --help/--version exit 0.
        command().main(args=argv, prog_name="retrieve", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except OptionError as exc:  # an option value the job refused: a usage error, as typer's own
        if _debug["on"]:
            raise
        typer.echo(f"retrieve: usage error: invalid value for {exc.option}: {error_line(exc)}", err=True)
        return 2
    except USER_ERRORS as exc:
        if _debug["on"]:
            raise
        typer.echo(f"retrieve: error: {error_line(exc)}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130
    return 0


def main() -> None:
    sys.exit(run())
