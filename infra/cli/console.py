"""What every command shares at its end: one `maskflow: ...` line on stderr and an exit code."""
from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A usage or connection problem: one line, exit 2."""


def say(message: str) -> None:
    print(f"maskflow: {message}", file=sys.stderr, flush=True)
