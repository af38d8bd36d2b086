"""The exit codes every `qaforge` command keeps (README, "Exit codes"), so scripts can tell a usable
partial result from a refused command and from a crash.

Only stdlib + typer: every `*/command.py` imports this before any heavy library.
"""

from __future__ import annotations

from typing import NoReturn, Optional

import typer

DONE = 0
SHORTFALL = 1  # finished and wrote its outputs, but fell short: fewer pairs than asked, failed requests, ...
BAD_INPUT = 2  # refused: a flag, a file or a line of a file is wrong (click's own usage errors are 2 too)
CRASH = 3  # an error qaforge did not expect; the traceback says where (Python itself would exit 1)


def bad_input(message: str, flag: Optional[str] = None) -> NoReturn:
    """Print `error: FLAG: message` to stderr and exit 2. File errors already name file:line in `message`."""
    prefix = f"{flag}: " if flag and not message.startswith(flag) else ""
    typer.secho(f"error: {prefix}{message}", fg="red", err=True)
    raise typer.Exit(BAD_INPUT)


def shortfall(message: str) -> NoReturn:
    typer.secho(f"warning: {message}", fg="yellow", err=True)
    raise typer.Exit(SHORTFALL)
