"""The ``uft`` command: the shared app (:mod:`.common`), subcommands on this machine (:mod:`.local`),
comparing runs (:mod:`.compare`), exporting encoders (:mod:`.export`) and the cluster (:mod:`.cluster`)."""

from __future__ import annotations

import sys

# Importing the modules registers their commands, in this order in `uft --help`.
from uft.cli import local, compare, export, cluster  # noqa: F401  # isort: skip
from uft.cli.common import app
from uft.orchestrate import forkserver

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    """The ``uft`` command: :data:`app`, then a quick exit (see :func:`forkserver.exit_like_python`)."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    forkserver.exit_like_python(code)
