"""`python -m infra.cli`: the same as the `maskflow` command."""
import sys

from infra.cli import main

sys.exit(main())
