"""What the scripts in tools/ share: argparse and errors in the project's one-line form, exit status 2.

A tool imports this from its own directory (a script's directory is first on sys.path), not from
jaxrnn, so that a tool that times a process (d2l's code, nanoGPT) adds no JAX import to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class ToolError(Exception):
    """Bad input or a failed step: printed as `jaxrnn: error: <the problem>; <what to do>`, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors end with the project's one-line form and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"jaxrnn: error: {message}; see '{self.prog} --help'\n")


def positive_int(s: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least 1")
    return v


def run_main(body: Callable[[], int]) -> int:
    """Run a tool's body: a ToolError becomes its one stderr line and exit 2, Ctrl-C exit 130."""
    try:
        return body()
    except ToolError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxrnn: interrupted", file=sys.stderr)
        return 130
