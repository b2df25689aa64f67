"""Errors about input files and their contents: shown to the user as one line."""


class DataError(ValueError):
    """An input file or its contents is wrong; the message names the file, column or rows."""
