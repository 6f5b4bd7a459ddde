"""How maskflow's commands and services speak to a person: one `maskflow: ...` line on stderr."""
from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"maskflow: {message}", file=sys.stderr, flush=True)
