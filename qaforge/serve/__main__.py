"""`python -m qaforge.serve --model PATH ...`: the same as `qaforge serve` (used by the launcher,
so that a server can run under another interpreter, e.g. the vLLM virtualenv)."""

import typer

from qaforge.serve.command import serve

if __name__ == "__main__":  # vLLM's worker processes re-import the main module: guard it
    typer.run(serve)
