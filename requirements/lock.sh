#!/usr/bin/env bash
# Refresh the hashed locks from pyproject.toml: run after changing a dependency there, and now
# and then to take upstream fixes (then run the tests and tests/bench/audit.py).  Needs uv
# (`pip install uv`, or UV=/path/to/uv).  dev.lock is resolved first; the app's and the
# worker's locks are held to the same versions, so every install runs the code the tests ran.
set -euo pipefail
cd "$(dirname "$0")"
uv=${UV:-uv}
# --no-strip-extras: pip (23.2 in Python 3.11's venv) with --require-hashes takes a dependency's
# `pkg[extra]>=x` as unpinned unless the lock names the extra, and fails once x+1 is released.
compile() { "$uv" pip compile --quiet --generate-hashes --no-strip-extras --python-version 3.11 --no-header "$@"; }
compile ../pyproject.toml build.in --extra dev -o dev.lock
compile ../pyproject.toml -c dev.lock -o app.lock
compile ../pyproject.toml --extra worker -c dev.lock -o worker.lock
