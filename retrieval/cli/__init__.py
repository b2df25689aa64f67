"""The `retrieve` command line. Each command group lives in its own module and registers on ``app``."""

from retrieval.cli.app import app, main, run

# Importing the command modules registers their commands on `app` (order = order in --help).
from retrieval.cli import data_commands  # noqa: E402,F401  import, layout, synth, info, demo
from retrieval.cli import eval_commands  # noqa: E402,F401  evaluate
from retrieval.cli import verify_commands  # noqa: E402,F401  verify
from retrieval.cli import identify_commands  # noqa: E402,F401  identify
from retrieval.cli import cluster_commands  # noqa: E402,F401  cluster
from retrieval.cli import index_commands  # noqa: E402,F401  build-index, search, index-info, tune
from retrieval.cli import catalogue_commands  # noqa: E402,F401  runs, sql, compare, report
from retrieval.cli import run_commands  # noqa: E402,F401  show, export, tag, rm, restore
from retrieval.cli import train_commands  # noqa: E402,F401  train, embed
from retrieval.cli import demo_command  # noqa: E402,F401  demo
from retrieval.cli.reference import add_reference_epilogs  # noqa: E402

add_reference_epilogs(app)  # each command's --help ends with its docs page

__all__ = ["app", "main", "run"]
