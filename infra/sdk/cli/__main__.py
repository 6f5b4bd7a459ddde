"""`python -m maskflow.infra.sdk.cli`: the same as the `maskflow` command."""
import sys

from maskflow.infra.sdk.cli import main

sys.exit(main())
