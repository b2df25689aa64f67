"""faiss prints some warnings straight to the C stderr; we capture them and return our own lines."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

_TRAINING_POINTS = re.compile(
    r"clustering (\d+) points to (\d+) centroids: please provide at least (\d+) training points"
)


@contextmanager
def captured_stderr_lines() -> Iterator[list[str]]:
    """Redirect file descriptor 2 while faiss runs; the yielded list holds its lines afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def faiss_warnings(lines: list[str], *, already_said: bool) -> list[str]:
    """faiss's lines as our one-line warnings ("please provide at least N" -> numbers in our words)."""
    out: list[str] = []
    for line in dict.fromkeys(lines):  # OPQ trains its PQ many times: say each thing once
        match = _TRAINING_POINTS.search(line)
        if match:
            if already_said:
                continue  # check_trainable already said it, with advice
            n, k, wanted = match.groups()
            out.append(
                f"training: {n} rows for {k} centroids; faiss wants at least {wanted} rows "
                "(39 per centroid): the index may be poor"
            )
        elif "Sampling a subset" in line:
            continue  # faiss subsamples large training sets itself: expected, not a problem
        else:
            out.append(f"faiss: {line}")
    return out
