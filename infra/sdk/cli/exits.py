"""What every command shares at its end: one `maskflow: ...` line on stderr (infra.console)
and an exit code."""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A usage or connection problem: one line, exit 2."""

