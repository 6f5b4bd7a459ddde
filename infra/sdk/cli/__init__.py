"""The `maskflow` command line (the entry point is `main`).

Exit codes: 0 success, 1 some tasks failed (each listed with its reason), 2 usage,
configuration or connection errors.  Errors print one line, never a traceback; Ctrl-C also
exits 2.
"""
from __future__ import annotations

from maskflow.infra.ops.console import say
from maskflow.infra.ops.install import InstallError
from maskflow.infra.ops.processes import StackError
from maskflow.infra.sdk.cli.exits import EXIT_USAGE, UsageError
from maskflow.infra.sdk.cli.parser import build_parser
from maskflow.infra.sdk.client import ClientError
from maskflow.infra.wiring.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, load_config(args.config))
    except (ConfigError, InstallError, StackError, ClientError, UsageError) as exc:
        say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_USAGE
