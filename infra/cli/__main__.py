"""`python -m maskflow.infra.cli`: the same as the `maskflow` command."""
import sys

from maskflow.infra.cli import main

sys.exit(main())
