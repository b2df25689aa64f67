"""What `--help` shows: every default in the text, no type shown for flags.

Typer renders help with rich markup, which reads ``[default: …]`` in a help text as a style tag
and drops it; flags get a ``<bool>`` type column although they take no value. ``polish`` walks
the built command once and fixes both for every command, so no option has to remember. (Typer
vendors its own click in recent versions, so the command is walked by its attributes.)
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape


def polish(command: Any) -> Any:
    """Escape markup in help texts and epilogs; hide the value type of flags. Returns ``command``."""
    for owner in (command, *command.params):
        for attribute in ("help", "epilog"):
            text = getattr(owner, attribute, None)
            if text:
                setattr(owner, attribute, escape(text))
    for param in command.params:
        if getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = ""  # a flag takes no value: no "<bool>"
    _flag_help_option(command)
    for sub in getattr(command, "commands", {}).values():
        polish(sub)
    return command


def _flag_help_option(command: Any) -> None:
    """``--help`` is made per call (``get_help_option``): hide its type too."""
    make = command.get_help_option

    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
